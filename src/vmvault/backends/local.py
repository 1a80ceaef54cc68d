"""Local-directory backend: one file per object, written to a temporary name, fsynced, renamed.

The rename is atomic on POSIX file systems, and the directory is fsynced after it, so an
object either exists whole after a crash or not at all. Temporary files carry a ``.tmp-``
prefix that ``list`` never returns and that the vault's ``check`` reports as leftovers.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from vmvault.backends import directio
from vmvault.backends.base import Payload, validate_key
from vmvault.errors import CorruptObject, ObjectMissing, VmvaultError

TMP_PREFIX = ".tmp-"
IOV_MAX = 1024


class BackendFull(VmvaultError):
    code = "backend_full"


class BackendReadOnly(VmvaultError):
    """The vault's storage refuses writes (a read-only mount, a snapshot, permissions)."""

    code = "vault_read_only"


class BackendDenied(VmvaultError):
    """The vault's objects may not be read by this user."""

    code = "permission_denied"


_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _read_only(key: str, root: Path, exc: OSError) -> BackendReadOnly:
    why = "is read-only" if exc.errno == errno.EROFS else "may not be written (permission denied)"
    return BackendReadOnly(f"the vault at {root} {why}: cannot write {key}")


def _denied(what: str, root: Path) -> BackendDenied:
    return BackendDenied(f"the vault at {root} may not be read (permission denied): {what}")


def _walk(root: Path, base: Path) -> Iterator[tuple[str, builtins.list[str], builtins.list[str]]]:
    """``os.walk`` that does not skip what it may not read: a folder closed to this user
    would list as empty, and its objects would look missing (a damaged vault) when they
    are only hidden. A folder removed while walked is no error."""

    def refuse(exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, PermissionError):
            folder = Path(exc.filename or base)
            where = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else folder
            raise _denied(f"{where}/", root) from None
        raise exc

    return os.walk(base, onerror=refuse)


class LocalBackend:
    # One pack writer keeps a local disk busy (each put ends with fsyncs): more would only
    # make them compete for it.
    parallel_writes = 1

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).absolute()
        self.fsync = fsync
        self._made_dirs: set[Path] = set()
        self._lock = threading.Lock()
        # Large objects (packs) go around the page cache while the file system takes it.
        self._direct = fsync and directio.enabled()

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._made_dirs:
            return
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._made_dirs.add(directory)

    def put(self, key: str, data: Payload) -> None:
        path = self._path(key)
        try:
            self._ensure_dir(path.parent)
        except OSError as exc:
            if exc.errno in _READ_ONLY:
                raise _read_only(key, self.root, exc) from None
            raise
        tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
        parts = [data] if isinstance(data, bytes | bytearray | memoryview) else data
        try:
            if not self._write_direct(tmp, parts):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    _write_all(fd, parts)
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackendFull(f"no space left writing {key} in {self.root}") from exc
            if exc.errno in _READ_ONLY:
                raise _read_only(key, self.root, exc) from None
            raise
        if self.fsync:
            self._fsync_dir(path.parent)

    def _write_direct(self, tmp: Path, parts: Sequence[bytes | bytearray | memoryview]) -> bool:
        """Write and fsync a large object with O_DIRECT; False: write it buffered."""
        if not self._direct or sum(len(p) for p in parts) < directio.DIRECT_MIN:
            return False
        try:
            directio.write_direct(tmp, parts)
        except directio.DirectUnsupported:
            self._direct = False  # this file system refuses it: no second try
            return False
        return True

    def _fsync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                if offset:
                    f.seek(offset)
                return f.read() if length is None else _read_exactly(f, length, key)
        except (FileNotFoundError, NotADirectoryError):  # a file where a folder would be
            raise ObjectMissing(f"object {key} is missing from {self.root}") from None
        except PermissionError:
            raise _denied(key, self.root) from None

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except PermissionError:  # a folder on the way is closed to us: we cannot tell
            raise _denied(key, self.root) from None

    def _stat(self, key: str) -> os.stat_result:
        try:
            return self._path(key).stat()
        except FileNotFoundError:
            raise ObjectMissing(f"object {key} is missing from {self.root}") from None
        except PermissionError:
            raise _denied(key, self.root) from None

    def size(self, key: str) -> int:
        return self._stat(key).st_size

    def modified(self, key: str) -> float:
        return self._stat(key).st_mtime

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix if prefix else self.root
        try:
            if not base.is_dir():
                return
        except PermissionError:
            raise _denied(prefix or "/", self.root) from None
        for dirpath, dirnames, filenames in _walk(self.root, base):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root)
            # The folder's part of the key once, not a Path per file: a vault lists its
            # packs at every open (625 000 of them at 10 TB).
            folder = rel.as_posix() + "/" if rel.parts else ""
            for name in sorted(filenames):
                if name.startswith(TMP_PREFIX):
                    continue
                yield folder + name

    def list_leftovers(self) -> builtins.list[str]:
        """Temporary files of writes that never finished (a crash mid-put)."""
        found: builtins.list[str] = []
        for dirpath, _dirnames, filenames in _walk(self.root, self.root):
            rel = Path(dirpath).relative_to(self.root)
            found += [(rel / n).as_posix() for n in filenames if n.startswith(TMP_PREFIX)]
        return sorted(found)

    def remove_leftovers(self, older_than: float) -> builtins.list[str]:
        """Remove the temporary files of writes that never finished, last written before
        ``older_than`` (a time): a write still under way keeps touching its file. Returns
        what went."""
        removed: builtins.list[str] = []
        for name in self.list_leftovers():
            path = self.root / name
            try:
                if path.lstat().st_mtime < older_than:
                    path.unlink()  # a symlink planted there goes itself, never its target
                    removed.append(name)
            except FileNotFoundError:  # its writer finished or cleaned up meanwhile
                continue
            except OSError as exc:
                if exc.errno in _READ_ONLY:  # one clear error, as for every other write
                    raise _read_only(name, self.root, exc) from None
                raise
        return removed

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno in _READ_ONLY:
                raise _read_only(key, self.root, exc) from None
            raise


def _write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """Gathered writes of all parts (no joining copy), resuming after short writes."""
    pending = [memoryview(p) for p in parts if len(p)]
    while pending:
        written = os.writev(fd, pending[:IOV_MAX])
        while written:
            if written >= len(pending[0]):
                written -= len(pending.pop(0))
            else:
                pending[0] = pending[0][written:]
                written = 0


def _read_exactly(f: object, length: int, key: str) -> bytes:
    data: bytes = f.read(length)  # type: ignore[attr-defined]
    if len(data) != length:
        raise CorruptObject(f"object {key} is shorter than expected (truncated)")
    return data
