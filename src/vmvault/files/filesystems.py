"""The guest file systems vmvault reads (ext2/3/4, XFS, FAT, NTFS), behind one small
interface: a ``Node`` is a file, directory or symlink with its metadata, its children,
its bytes and where its holes are.

The parsing is dissect's (dissect.extfs, .xfs, .fat, .ntfs): pure Python, over any
seekable file, so a guest's file system is read in this process, never mounted by the
host's kernel (a backed-up guest may be hostile; its file system must not reach the
kernel's parsers), and needs no root.
"""

from __future__ import annotations

import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

FILE, DIRECTORY, SYMLINK, OTHER = "file", "dir", "symlink", "other"
# NTFS symlinks made by ntfs-3g on Linux (its default): a system file holding this magic
# and the target in UTF-16.
INTERIX_SYMLINK = b"IntxLNK\x01"
# A reparse point's tag for a symbolic link (Windows' own symlinks).


@dataclass(frozen=True)
class Entry:
    """What ``ls -l`` shows of a node. ``uid``/``gid`` are None on file systems without
    owners (FAT, NTFS); times are POSIX seconds."""

    name: str
    kind: str
    size: int
    mode: int
    uid: int | None
    gid: int | None
    mtime: float | None
    atime: float | None
    target: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            "mode": f"{self.mode:04o}",
            "uid": self.uid,
            "gid": self.gid,
            "mtime": self.mtime,
            "atime": self.atime,
            "target": self.target,
        }


def _seconds(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIRECTORY
    if stat.S_ISLNK(mode):
        return SYMLINK
    return OTHER


class Node(ABC):
    """A file system object; subclasses wrap one parser's object."""

    entry: Entry

    @abstractmethod
    def children(self) -> Iterator[Node]:
        """The directory's entries, without ``.`` and ``..``."""

    @abstractmethod
    def open(self) -> BinaryIO:
        """The file's bytes (holes read as zeros)."""

    def data_ranges(self) -> list[tuple[int, int]] | None:
        """(offset, length) of the file's allocated bytes, in order; None if unknown
        (then all of it is read). What is outside them is a hole."""
        return None


def runs_to_ranges(
    runs: list[tuple[int | None, int]], unit: int, size: int
) -> list[tuple[int, int]]:
    """A parser's runs (start block or None for a hole, block count) as byte ranges."""
    ranges: list[tuple[int, int]] = []
    pos = 0
    for start, count in runs:
        length = count * unit
        if start is not None and pos < size:
            end = min(pos + length, size)
            if ranges and ranges[-1][0] + ranges[-1][1] == pos:
                ranges[-1] = (ranges[-1][0], end - ranges[-1][0])
            else:
                ranges.append((pos, end - pos))
        pos += length
    return ranges


# -- ext2/3/4 and XFS: POSIX inodes ----------------------------------------------------


class InodeNode(Node):
    """An ext or XFS inode (dissect's two inode classes share this much)."""

    def __init__(self, name: str, inode: Any, block_size: int) -> None:
        self._inode = inode
        self._block_size = block_size
        mode = self._mode()
        kind = _kind(mode)
        self.entry = Entry(
            name=name,
            kind=kind,
            size=inode.size,
            mode=stat.S_IMODE(mode),
            uid=self._owner()[0],
            gid=self._owner()[1],
            mtime=inode.mtime_ns / 1e9,
            atime=inode.atime_ns / 1e9,
            target=inode.link if kind == SYMLINK else None,
        )

    @abstractmethod
    def _mode(self) -> int:
        """The inode's mode bits (type and permissions)."""

    @abstractmethod
    def _owner(self) -> tuple[int, int]:
        """The inode's uid and gid."""

    def children(self) -> Iterator[Node]:
        for name, inode in self._inode.listdir().items():
            if name not in (".", ".."):
                yield type(self)(name, inode, self._block_size)

    def open(self) -> BinaryIO:
        return self._inode.open()  # type: ignore[no-any-return]

    @abstractmethod
    def _runs(self) -> list[tuple[int | None, int]]:
        """The parser's runs of the file's blocks (None: a hole)."""

    def data_ranges(self) -> list[tuple[int, int]] | None:
        return runs_to_ranges(self._runs(), self._block_size, self.entry.size)


class ExtNode(InodeNode):
    def _mode(self) -> int:
        return int(self._inode.inode.i_mode)

    def _owner(self) -> tuple[int, int]:
        raw = self._inode.inode
        high = raw.osd2.linux2 if hasattr(raw, "osd2") else None
        uid_high = getattr(high, "l_i_uid_high", 0) if high is not None else 0
        gid_high = getattr(high, "l_i_gid_high", 0) if high is not None else 0
        return int(raw.i_uid) | int(uid_high) << 16, int(raw.i_gid) | int(gid_high) << 16

    def _runs(self) -> list[tuple[int | None, int]]:
        return self._inode.dataruns()  # type: ignore[no-any-return]


class XfsNode(InodeNode):
    def _mode(self) -> int:
        return int(self._inode.inode.di_mode)

    def _owner(self) -> tuple[int, int]:
        return int(self._inode.inode.di_uid), int(self._inode.inode.di_gid)

    def _runs(self) -> list[tuple[int | None, int]]:
        return self._inode.dataruns  # type: ignore[no-any-return]


# -- FAT ---------------------------------------------------------------------------------


class FatNode(Node):
    """A FAT directory entry: no owners; read-only entries lose their write bits."""

    def __init__(self, name: str, dirent: Any) -> None:
        self._dirent = dirent
        directory = bool(dirent.is_directory())
        mode = 0o755 if directory else 0o644
        if dirent.is_readonly():
            mode &= ~0o222
        self.entry = Entry(
            name=name,
            kind=DIRECTORY if directory else FILE,
            size=0 if directory else int(dirent.size),
            mode=mode,
            uid=None,
            gid=None,
            mtime=_seconds(dirent.mtime),
            atime=_seconds(dirent.atime),
        )

    def children(self) -> Iterator[Node]:
        for child in self._dirent.iterdir():
            if child.is_volume_id() or child.name in (".", ".."):
                continue
            yield FatNode(fat_name(child), child)

    def open(self) -> BinaryIO:
        return self._dirent.open()  # type: ignore[no-any-return]


# Windows NT's case bits in a short-name entry without a long name: "hostname" is stored
# as HOSTNAME with the bit that says "show the base name in lower case".
FAT_LOWER_BASE, FAT_LOWER_EXT = 0x08, 0x10


def fat_name(dirent: Any) -> str:
    if dirent.ldirents:  # a long name: as written
        return str(dirent.name)
    flags = int(dirent.dirent.DIR_NTRes)
    base, dot, ext = str(dirent.short_name).partition(".")
    if flags & FAT_LOWER_BASE:
        base = base.lower()
    if flags & FAT_LOWER_EXT:
        ext = ext.lower()
    return base + dot + ext


# -- NTFS ----------------------------------------------------------------------------------

# The file system's own files at the root ($MFT, $LogFile, ...): not the guest's files.
NTFS_METADATA_PREFIX = "$"


class NtfsNode(Node):
    """An NTFS file record: no POSIX owners; symlinks from Windows reparse points or
    from ntfs-3g's Interix files."""

    def __init__(self, name: str, record: Any, cluster_size: int, *, root: bool = False) -> None:
        self._record = record
        self._cluster_size = cluster_size
        self._root = root
        info = record.attributes[0x10]  # $STANDARD_INFORMATION
        times = info[0] if info else None
        directory = bool(record.is_dir())
        target = None if directory else self._symlink_target()
        kind = DIRECTORY if directory else SYMLINK if target is not None else FILE
        self.entry = Entry(
            name=name,
            kind=kind,
            size=0 if kind != FILE else int(record.size()),
            mode=0o755 if directory else 0o777 if kind == SYMLINK else 0o644,
            uid=None,
            gid=None,
            mtime=_seconds(times.last_modification_time) if times else None,
            atime=_seconds(times.last_access_time) if times else None,
            target=target,
        )

    def _symlink_target(self) -> str | None:
        record = self._record
        if record.is_symlink():
            return str(record.reparse_point_substitute_name).replace("\\", "/")
        if record.size() < 2048 and record.attributes[0x80]:
            head = record.open().read(2048)
            if head.startswith(INTERIX_SYMLINK):
                return str(head[len(INTERIX_SYMLINK) :].decode("utf-16-le", "surrogatepass"))
        return None

    def children(self) -> Iterator[Node]:
        for name, entry in self._record.listdir(ignore_dos=True).items():
            if name == "." or (self._root and name.startswith(NTFS_METADATA_PREFIX)):
                continue
            yield NtfsNode(name, entry.dereference(), self._cluster_size)

    def open(self) -> BinaryIO:
        return self._record.open()  # type: ignore[no-any-return]

    def data_ranges(self) -> list[tuple[int, int]] | None:
        data = self._record.attributes[0x80]
        if not data or data[0].resident:
            return None
        return runs_to_ranges(self._record.dataruns(), self._cluster_size, self.entry.size)


# -- opening a file system --------------------------------------------------------------


@dataclass
class FileSystem:
    """One opened file system: its type, label and root."""

    fs_type: str
    label: str
    root: Node
    case_sensitive: bool = True


def open_file_system(fs_type: str, fh: BinaryIO) -> FileSystem:
    """Parse the file system of ``fs_type`` (as ``probe`` named it) on ``fh``."""
    if fs_type in ("ext2", "ext3", "ext4"):
        from dissect.extfs import ExtFS

        ext = ExtFS(fh)
        label = bytes(ext.sb.s_volume_name).split(b"\0")[0].decode(errors="replace")
        return FileSystem(fs_type, label, ExtNode("/", ext.get("/"), ext.block_size))
    if fs_type == "xfs":
        from dissect.xfs import XFS

        xfs = XFS(fh)
        label = bytes(xfs.sb.sb_fname).split(b"\0")[0].decode(errors="replace")
        return FileSystem(fs_type, label, XfsNode("/", xfs.get("/"), xfs.block_size))
    if fs_type == "vfat":
        from dissect.fat import FATFS

        fat = FATFS(fh)
        label = str(getattr(fat, "volume_label", "") or "").strip()
        return FileSystem(fs_type, label, FatNode("/", fat.root), case_sensitive=False)
    if fs_type == "ntfs":
        from dissect.ntfs import NTFS

        ntfs = NTFS(fh)
        root = NtfsNode("/", ntfs.mft.get("/"), ntfs.cluster_size, root=True)
        label = str(getattr(ntfs, "volume_name", "") or "")
        return FileSystem(fs_type, label, root, case_sensitive=False)
    raise ValueError(f"no reader for {fs_type} file systems")
