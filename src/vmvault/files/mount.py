"""`vmvault mount`: a point's disk as a read-only FUSE file system, one folder per volume.

The kernel sees only FUSE requests; the guest's partition table and file systems are
parsed here (files/), so a hostile guest's file system never reaches the kernel's
parsers. Requests are served one at a time: the parsers share one position in the disk.
The mount ends with ``fusermount3 -u DIR``, Ctrl-C or SIGTERM; then the vault's lock
is released.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections import OrderedDict
from typing import Any, BinaryIO

from vmvault.app.context import Context
from vmvault.app.files import PointDisk, open_point_disk
from vmvault.errors import NotFound, UsageError, VmvaultError
from vmvault.files.browse import split_path
from vmvault.files.filesystems import DIRECTORY, FILE, SYMLINK, Entry, Node

log = logging.getLogger("vmvault")
KIND_BITS = {FILE: stat.S_IFREG, DIRECTORY: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}
NODE_CACHE = 4096  # paths whose nodes are kept: each lookup otherwise walks from the root


class MountFailed(VmvaultError):
    code = "mount_failed"


def _fuse() -> Any:
    try:
        import mfusepy
    except (ImportError, OSError) as exc:  # OSError: libfuse itself is missing
        raise MountFailed(f"FUSE is not usable here: {exc}") from None
    return mfusepy


class PointFileSystem:
    """The FUSE operations over one opened disk; errors become errno values."""

    use_ns = True

    def __init__(self, disk: PointDisk, mount_time: float) -> None:
        self.disk = disk
        self.mount_time = mount_time
        self._lock = threading.Lock()
        self._nodes: OrderedDict[str, Node | None] = OrderedDict()
        self._open: dict[int, BinaryIO] = {}
        self._next_handle = 1
        self.readable = {v.name for v in disk.browser.volumes if v.readable}

    # -- lookups ------------------------------------------------------------------------

    def _node(self, path: str) -> Node | None:
        """The node at ``path``; None for ``/`` (the volumes)."""
        key = "/" + "/".join(split_path(path))
        if key in self._nodes:
            self._nodes.move_to_end(key)
            return self._nodes[key]
        parts = split_path(key)
        if not parts:
            return None
        if parts[0] not in self.readable:
            raise _errno(errno.ENOENT)
        try:
            located = self.disk.browser.locate(key)
        except NotFound:
            raise _errno(errno.ENOENT) from None
        except UsageError:
            raise _errno(errno.ENOTDIR) from None
        except VmvaultError as exc:
            log.warning("%s", exc.message)
            raise _errno(errno.EIO) from None
        node = located.node
        if node is None and located.volume is not None:
            node = self.disk.browser.file_system(located.volume).root
        self._nodes[key] = node
        if len(self._nodes) > NODE_CACHE:
            self._nodes.popitem(last=False)
        return node

    def _attrs(self, entry: Entry | None) -> dict[str, Any]:
        if entry is None:  # the root: the volumes
            when = int(self.mount_time * 1e9)
            return {
                "st_mode": stat.S_IFDIR | 0o555,
                "st_nlink": 2,
                "st_size": 0,
                "st_mtime": when,
                "st_atime": when,
                "st_ctime": when,
            }
        mtime = int((entry.mtime or self.mount_time) * 1e9)
        atime = int(entry.atime * 1e9) if entry.atime is not None else mtime
        mode = KIND_BITS.get(entry.kind, stat.S_IFREG) | (entry.mode & 0o7777)
        return {
            "st_mode": mode & ~0o222,  # read-only, whatever the guest's bits said
            "st_nlink": 2 if entry.kind == DIRECTORY else 1,
            "st_size": entry.size
            if entry.kind != SYMLINK
            else len(os.fsencode(entry.target or "")),
            "st_uid": entry.uid if entry.uid is not None else os.getuid(),
            "st_gid": entry.gid if entry.gid is not None else os.getgid(),
            "st_mtime": mtime,
            "st_atime": atime,
            "st_ctime": mtime,
            "st_blocks": (entry.size + 511) // 512,
        }

    # -- FUSE operations ------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._lock:
            node = self._node(path)
            return self._attrs(node.entry if node is not None else None)

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._lock:
            node = self._node(path)
            if node is None:
                return [".", "..", *sorted(self.readable)]
            if node.entry.kind != DIRECTORY:
                raise _errno(errno.ENOTDIR)
            try:
                names = [child.entry.name for child in node.children()]
            except VmvaultError as exc:
                log.warning("%s", exc.message)
                raise _errno(errno.EIO) from None
            except Exception as exc:  # a damaged directory
                log.warning("directory %s cannot be read: %s", path, exc)
                raise _errno(errno.EIO) from None
            return [".", "..", *names]

    def readlink(self, path: str) -> str:
        with self._lock:
            node = self._node(path)
            if node is None or node.entry.target is None:
                raise _errno(errno.EINVAL)
            return node.entry.target

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise _errno(errno.EROFS)
        with self._lock:
            node = self._node(path)
            if node is None or node.entry.kind != FILE:
                raise _errno(errno.EISDIR)
            handle = self._next_handle
            self._next_handle += 1
            self._open[handle] = node.open()
            return handle

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._lock:
            stream = self._open.get(fh)
            if stream is None:
                raise _errno(errno.EBADF)
            try:
                stream.seek(offset)
                return stream.read(size)
            except VmvaultError as exc:  # a damaged chunk: this read fails, nothing else
                log.warning("%s: %s", path, exc.message)
                raise _errno(errno.EIO) from None

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._open.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


def _errno(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def serve_mount(
    ctx: Context, point_ref: str, mountpoint: str, *, disk: str | None = None, vm: str | None = None
) -> None:
    """Mount and serve until unmounted; returns when the mount ends."""
    import time

    fuse = _fuse()
    if not os.path.isdir(mountpoint):
        raise UsageError(f"{mountpoint} is not a directory")
    if os.listdir(mountpoint):
        raise UsageError(f"{mountpoint} is not empty")
    with open_point_disk(ctx, point_ref, disk=disk, vm=vm) as pd:
        operations = PointFileSystem(pd, time.time())
        log.info("mounting disk %s of point %s on %s", pd.disk, pd.point_id, mountpoint)
        try:
            fuse.FUSE(
                operations,
                mountpoint,
                foreground=True,
                nothreads=True,
                ro=True,
                fsname=f"vmvault:{pd.point_id[:24]}",
                default_permissions=True,
            )
        except RuntimeError as exc:
            raise MountFailed(f"cannot mount on {mountpoint}: {exc}") from None
