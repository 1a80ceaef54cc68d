"""The files of the local cache (``ObjectCache``): where it lives, its size bound, each copy
checksummed, written atomically and privately, evicted least recently used first. Which
copies may answer a read is ``backends/cache.py``'s ``CachingBackend``."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3

from vmvault.backends.base import validate_key
from vmvault.errors import UsageError

CACHE_DIR_ENV = "VMVAULT_CACHE_DIR"
NO_CACHE_ENV = "VMVAULT_NO_CACHE"
CACHE_LIMIT_ENV = "VMVAULT_CACHE_LIMIT"
DEFAULT_LIMIT = 1 << 30
MAGIC = b"VMVC\x01"
DIGEST = 32
HEADER = len(MAGIC) + DIGEST
TMP_PREFIX = ".tmp-"
# The host's chunk index of the vault (vault/localindex.py) lives beside the copies, under
# the same vault id: not copies, never counted or evicted as such (``clear`` removes it; the
# next open rebuilds it).
CHUNK_INDEX_DIR = "chunk-index"
LOCATION_FILE = ".location"  # where a vault's copies came from, for `vmvault vault cache`
STALE_TMP = 3600.0  # a temporary file this old is a crashed writer's: removed on the next scan
LOW_WATER = 0.9  # eviction frees down to this share of the limit, so it does not run per write
VAULT_ID = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
CONFIG_KEY = "config"
# Copies used only for keys the store listed in this process: index objects and points
# (deleted by GC, prune, forget) and key slots (removed by `vault key remove` or `passwd`:
# a copy must never open a vault with a passphrase the vault no longer takes).
LISTED = ("index/", "points/", "keys/")
log = logging.getLogger("vmvault")


# -- settings ---------------------------------------------------------------------------


def cache_root() -> Path:
    """``$VMVAULT_CACHE_DIR``, else ``$XDG_CACHE_HOME/vmvault``, else ``~/.cache/vmvault``."""
    if chosen := os.environ.get(CACHE_DIR_ENV):
        return Path(chosen).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the spec: absolute only
    return base / "vmvault"


def cache_enabled() -> bool:
    """False when ``$VMVAULT_NO_CACHE`` is set to anything but ``0``/``false``/``no``."""
    return os.environ.get(NO_CACHE_ENV, "").strip().lower() in ("", "0", "false", "no")


def parse_size(text: str) -> int:
    """``1073741824``, ``512M``, ``2G``, ``1.5GiB`` as bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise UsageError(f"{CACHE_LIMIT_ENV}: {text!r} is not a size (such as 512M or 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def cache_limit() -> int:
    text = os.environ.get(CACHE_LIMIT_ENV)
    return DEFAULT_LIMIT if not text else parse_size(text)


# -- the files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VaultUsage:
    vault_id: str
    location: str | None
    entries: int
    size: int


def checksum(parts: Iterable[bytes | bytearray | memoryview]) -> bytes:
    hasher = blake3.blake3()
    for part in parts:
        hasher.update(part)
    return hasher.digest()


def name_digest(key: str) -> bytes | None:
    """The BLAKE3 an index object's or a pack's name states, None for other keys."""
    kind, _, rest = key.partition("/")
    name = rest.rsplit("/", 1)[-1]
    if kind in ("index", "packs") and _HEX64.match(name):
        return bytes.fromhex(name)
    return None


class ObjectCache:
    """The cache's files: ``<root>/<vault id>/<key>``, bounded to ``limit`` bytes.

    Any failure of the local file system (full, read-only, removed under us) makes a read a
    miss and a write a no-op: the store is always there to fall back on."""

    def __init__(self, root: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.root = Path(root).absolute()
        self.limit = limit
        self._lock = threading.Lock()
        self._usable: bool | None = None
        self._usage: int | None = None  # bytes of entries, counted at the last scan plus writes
        self._touched: set[Path] = set()

    @property
    def max_entry(self) -> int:
        """No single copy may take more than a quarter of the bound."""
        return self.limit // 4

    def usable(self) -> bool:
        """Whether the root can be used: made if missing (mode 0700), ours, not open to others.

        A root owned by another user is refused: its copies could have been put there by
        them (they could not forge an object the vault accepts, but could waste requests)."""
        if self._usable is None:
            try:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                info = self.root.stat()
                if info.st_uid != os.getuid():
                    raise PermissionError(f"{self.root} belongs to another user")
                if stat.S_IMODE(info.st_mode) & 0o077:
                    os.chmod(self.root, 0o700)  # ours: readable by us only
                self._usable = True
            except OSError as exc:
                log.warning("warning: local cache disabled: %s", exc)
                self._usable = False
        return self._usable

    def _vault_dir(self, vault_id: str) -> Path:
        if not VAULT_ID.match(vault_id):  # a directory name: nothing but 32 hex digits
            raise ValueError(f"not a vault id: {vault_id!r}")
        return self.root / vault_id

    def _path(self, vault_id: str, key: str) -> Path:
        return self._vault_dir(vault_id).joinpath(*validate_key(key).split("/"))

    def _makedirs(self, directory: Path) -> None:
        """Every level below the root with mode 0700 (``mkdir(parents=True)`` would give the
        levels above the last the umask's mode)."""
        missing = []
        while directory != self.root and not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o700)

    def _touch(self, path: Path) -> None:
        """Mark a copy used (its mtime: the LRU order), once per process and copy."""
        if path in self._touched:
            return
        with contextlib.suppress(OSError):
            os.utime(path)
        self._touched.add(path)

    def _discard(self, path: Path, why: str) -> None:
        log.debug("local cache: dropping %s: %s", path, why)
        with contextlib.suppress(OSError):
            path.unlink()
        self._touched.discard(path)

    # -- reading ------------------------------------------------------------------------

    def read(self, vault_id: str, key: str) -> bytes | None:
        """The stored object, if a copy exists and is intact; a damaged copy is deleted."""
        path = self._path(vault_id, key)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        payload = memoryview(raw)[HEADER:]
        stated = raw[len(MAGIC) : HEADER]
        named = name_digest(key)
        if (
            len(raw) < HEADER
            or not raw.startswith(MAGIC)
            or checksum([payload]) != stated
            or (named is not None and stated != named)
        ):
            self._discard(path, "checksum mismatch")
            return None
        self._touch(path)
        return bytes(payload)

    def verify(self, vault_id: str, key: str) -> bool:
        """Whether a copy exists and is intact (read in pieces: a pack may be tens of MiB)."""
        path = self._path(vault_id, key)
        try:
            with open(path, "rb") as f:
                header = f.read(HEADER)
                hasher = blake3.blake3()
                while piece := f.read(1 << 20):
                    hasher.update(piece)
        except OSError:
            return False
        named = name_digest(key)
        stated = header[len(MAGIC) :]
        if (
            len(header) < HEADER
            or not header.startswith(MAGIC)
            or hasher.digest() != stated
            or (named is not None and stated != named)
        ):
            self._discard(path, "checksum mismatch")
            return False
        self._touch(path)
        return True

    def read_range(self, vault_id: str, key: str, offset: int, length: int) -> bytes | None:
        """A range of a copy that ``verify`` passed in this process; None if it is gone or
        shorter than asked (then deleted)."""
        path = self._path(vault_id, key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.pread(fd, length, HEADER + offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) != length:
            self._discard(path, "shorter than the range asked")
            return None
        return data

    # -- writing ------------------------------------------------------------------------

    def write(
        self,
        vault_id: str,
        key: str,
        parts: Sequence[bytes | bytearray | memoryview],
        digest: bytes | None = None,
    ) -> bool:
        """Keep a copy of an object (in parts, in order); ``digest``: its BLAKE3, if known.

        Written to a temporary name and renamed: a reader never sees half a copy."""
        size = sum(len(p) for p in parts)
        if size > self.max_entry or not self.usable():
            return False
        path = self._path(vault_id, key)
        tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
        try:
            self._makedirs(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + (digest or checksum(parts)))
                for part in parts:
                    f.write(part)
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("local cache: cannot keep %s: %s", key, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self._touched.add(path)  # just written: the newest already
        with self._lock:
            if self._usage is not None:
                self._usage += HEADER + size
            over = self._usage is None or self._usage > self.limit
        if over:
            self.evict()
        return True

    def drop(self, vault_id: str, key: str) -> bool:
        """Delete a copy; whether there was one."""
        path = self._path(vault_id, key)
        try:
            path.unlink()
        except OSError:
            return False
        self._touched.discard(path)
        return True

    def prune(self, vault_id: str, prefix: str, listed: frozenset[str]) -> None:
        """Delete the copies under ``prefix`` of keys the store no longer lists."""
        folder = self._vault_dir(vault_id) / prefix.rstrip("/")
        for path, _info in self._files(folder):
            key = path.relative_to(self._vault_dir(vault_id)).as_posix()
            if key not in listed:
                self._discard(path, "no longer listed by the store")

    def set_location(self, vault_id: str, where: str) -> None:
        """Note where this vault's copies come from (shown by ``vmvault vault cache``)."""
        if not self.usable():
            return
        path = self._vault_dir(vault_id) / LOCATION_FILE
        with contextlib.suppress(OSError):
            if path.is_file() and path.read_text() == where:
                return
            self._makedirs(path.parent)
            tmp = path.with_name(f"{TMP_PREFIX}location.{secrets.token_hex(6)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(where)
            os.replace(tmp, path)

    # -- the bound ----------------------------------------------------------------------

    def _files(self, folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
        """The copies under ``folder`` (not the temporary files, which a stale one is
        removed, nor the location notes)."""
        now = time.time()
        for dirpath, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if d != CHUNK_INDEX_DIR]
            for name in names:
                path = Path(dirpath) / name
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if name.startswith(TMP_PREFIX):
                    if now - info.st_mtime > STALE_TMP:
                        with contextlib.suppress(OSError):
                            path.unlink()
                    continue
                if not name.startswith(".") and stat.S_ISREG(info.st_mode):
                    yield path, info

    def _vault_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if VAULT_ID.match(p.name))
        except OSError:
            return []

    def evict(self) -> None:
        """Delete the least recently used copies until the cache is within its bound."""
        with self._lock:
            found = [
                (info.st_mtime, info.st_size, path)
                for vault_id in self._vault_ids()
                for path, info in self._files(self.root / vault_id)
            ]
            total = sum(size for _, size, _ in found)
            if total > self.limit:
                for _mtime, size, path in sorted(found):
                    if total <= self.limit * LOW_WATER:
                        break
                    self._discard(path, "least recently used (over the size bound)")
                    total -= size
            self._usage = total

    def usage(self, vault_ids: Iterable[str] | None = None) -> list[VaultUsage]:
        """Copies and bytes per vault (all vaults, or those named)."""
        chosen = self._vault_ids() if vault_ids is None else sorted(vault_ids)
        out = []
        for vault_id in chosen:
            folder = self._vault_dir(vault_id)
            files = [info.st_size for _path, info in self._files(folder)]
            try:
                location: str | None = (folder / LOCATION_FILE).read_text()
            except OSError:
                location = None
            out.append(VaultUsage(vault_id, location, len(files), sum(files)))
        return out

    def clear(self, vault_ids: Iterable[str] | None = None) -> tuple[int, int]:
        """Delete the copies of the vaults named (all by default); (copies, bytes) deleted."""
        gone = self.usage(vault_ids)
        for entry in gone:
            shutil.rmtree(self._vault_dir(entry.vault_id), ignore_errors=True)
        with self._lock:
            self._usage = None
            self._touched.clear()
        return sum(e.entries for e in gone), sum(e.size for e in gone)


# -- the backend --------------------------------------------------------------------------
