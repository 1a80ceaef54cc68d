"""Copy files and directories out of a point's file system into a local directory.

Everything is created below one directory opened once, through directory descriptors
and ``O_NOFOLLOW``/``O_EXCL``: a name from the guest's file system cannot climb out
(names with ``/``, ``.``, ``..`` are refused), nothing that exists is overwritten, and a
symlink swapped in by someone else during the copy is never followed. Directories are
made private (0700) while they fill and get their own mode last.

What is kept: contents (holes stay holes), permissions, owners (when running as root and
the file system has owners), modification and access times, symlinks (as links, never
followed). Device nodes, FIFOs and sockets are skipped and reported, never created.
A file whose bytes the vault cannot give back (a damaged chunk) is removed, reported,
and the copy goes on with the next.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from vmvault.errors import Conflict, UsageError, VmvaultError
from vmvault.export.reader import ExportReadError
from vmvault.files.filesystems import DIRECTORY, FILE, SYMLINK, Entry, Node

COPY_PIECE = 4 * 1024 * 1024  # a block of the vault: one fetch per piece at most
PRIVATE_DIR = 0o700


@dataclass
class ExtractReport:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes_written: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "directories": self.directories,
            "symlinks": self.symlinks,
            "bytes_written": self.bytes_written,
            "skipped": self.skipped,
            "failed": self.failed,
        }


class CopyFailed(VmvaultError):
    """The destination refused a write (full, read-only, no permission)."""

    code = "copy_failed"


def safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def open_target(path: str) -> int:
    """The destination directory, made if missing, opened once for every creation."""
    try:
        os.makedirs(path, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError:
        raise UsageError(f"{path} is not a directory") from None
    except FileExistsError:
        raise UsageError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise UsageError(f"cannot use {path} as the destination: {exc.strerror}") from None


class Extractor:
    """Writes nodes below ``target_fd``; ``on_bytes`` hears of every piece written."""

    def __init__(
        self,
        target_fd: int,
        *,
        owners: bool | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.target_fd = target_fd
        self.owners = os.geteuid() == 0 if owners is None else owners
        self.on_bytes = on_bytes
        self.report = ExtractReport()

    def refuse_existing(self, name: str, shown: str) -> None:
        """Before anything is written: a top-level name that exists stops the copy."""
        try:
            os.stat(name, dir_fd=self.target_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        raise Conflict(f"{shown} already exists: nothing was overwritten")

    def extract(self, node: Node, name: str, path: str, shown_target: str) -> None:
        """Copy ``node`` (and below it) as ``name`` in the destination; a write the
        destination refuses stops the copy with one error (what was copied stays)."""
        try:
            self._copy(node, self.target_fd, name, path)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise CopyFailed(
                f"cannot write into {shown_target}{where}: {exc.strerror or exc}; "
                f"{self.report.files} files were copied before"
            ) from None

    def _copy(self, node: Node, dir_fd: int, name: str, path: str) -> None:
        entry = node.entry
        if not safe_name(name):
            self.report.skipped.append({"path": path, "reason": "unsafe name"})
            return
        if entry.kind == DIRECTORY:
            self._directory(node, dir_fd, name, path)
        elif entry.kind == FILE:
            self._file(node, dir_fd, name, path)
        elif entry.kind == SYMLINK and entry.target is not None:
            os.symlink(entry.target, name, dir_fd=dir_fd)
            self._own(entry, name, dir_fd)
            self._times(entry, name, dir_fd)
            self.report.symlinks += 1
        else:
            self.report.skipped.append({"path": path, "reason": f"{entry.kind} not copied"})

    def _directory(self, node: Node, dir_fd: int, name: str, path: str) -> None:
        os.mkdir(name, PRIVATE_DIR, dir_fd=dir_fd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            try:
                for child in node.children():
                    child_path = f"{path.rstrip('/')}/{child.entry.name}"
                    self._copy(child, fd, child.entry.name, child_path)
            except ExportReadError as exc:  # the directory's own blocks: what it lists is lost
                self.report.failed.append({"path": path, "reason": exc.message})
            except Exception as exc:  # a damaged directory in the guest's file system
                reason = f"directory cannot be read: {exc or type(exc).__name__}"
                self.report.failed.append({"path": path, "reason": reason})
            self._own(node.entry, None, fd)
            os.fchmod(fd, self._mode(node.entry))
            os.utime(fd, ns=_ns(node.entry))
        finally:
            os.close(fd)
        self.report.directories += 1

    def _file(self, node: Node, dir_fd: int, name: str, path: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            written = self._contents(node, fd)
            self._own(node.entry, None, fd)
            os.fchmod(fd, self._mode(node.entry))
            os.utime(fd, ns=_ns(node.entry))
        except ExportReadError as exc:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)
            self.report.failed.append({"path": path, "reason": exc.message})
            return
        except BaseException:  # a full or failing disk, a signal: no half-written file
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        os.close(fd)
        self.report.files += 1
        self.report.bytes_written += written

    def _contents(self, node: Node, fd: int) -> int:
        size = node.entry.size
        source = node.open()
        ranges = node.data_ranges()
        written = 0
        for start, length in ranges if ranges is not None else [(0, size)]:
            written += self._copy_range(source, fd, start, length, skip_zeros=ranges is None)
        os.ftruncate(fd, size)  # the holes after the last data, and the file's length
        return written

    def _copy_range(
        self, source: BinaryIO, fd: int, start: int, length: int, *, skip_zeros: bool
    ) -> int:
        written = 0
        source.seek(start)
        pos, end = start, start + length
        while pos < end:
            piece = source.read(min(COPY_PIECE, end - pos))
            if not piece:
                break
            # Without the file system's map of holes, runs of zeros become holes here.
            if not (skip_zeros and piece.count(0) == len(piece)):
                os.pwrite(fd, piece, pos)
                written += len(piece)
            if self.on_bytes is not None:
                self.on_bytes(len(piece))
            pos += len(piece)
        return written

    def _mode(self, entry: Entry) -> int:
        # Set-id bits only with the owners they were meant for.
        return entry.mode if self.owners else entry.mode & ~(stat.S_ISUID | stat.S_ISGID)

    def _own(self, entry: Entry, name: str | None, fd: int) -> None:
        if not self.owners or entry.uid is None or entry.gid is None:
            return
        try:
            if name is None:
                os.fchown(fd, entry.uid, entry.gid)
            else:
                os.chown(name, entry.uid, entry.gid, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EINVAL):
                raise

    def _times(self, entry: Entry, name: str, dir_fd: int) -> None:
        with contextlib.suppress(NotImplementedError):  # no lutimes on this platform
            os.utime(name, ns=_ns(entry), dir_fd=dir_fd, follow_symlinks=False)


def _ns(entry: Entry) -> tuple[int, int]:
    mtime = int((entry.mtime or 0) * 1e9)
    atime = int(entry.atime * 1e9) if entry.atime is not None else mtime
    return atime, mtime
