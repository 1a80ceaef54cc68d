"""Paths inside a point's disk: ``/<volume>/<path in its file system>``.

``/`` lists the disk's volumes (``part1``, ``vg-root``, ``disk``); below a volume, paths
are its file system's, resolved one component at a time without following the last one
(a symlink is listed or copied as a symlink). Symlinks met on the way are not followed
either: a path names what the guest's directories hold, not where its links point.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from vmvault.errors import NotFound, UsageError, VmvaultError
from vmvault.export.reader import ExportReadError
from vmvault.files.filesystems import DIRECTORY, Entry, FileSystem, Node, open_file_system
from vmvault.files.volumes import Volume, find_volumes

log = logging.getLogger("vmvault")


class FileNotInPoint(NotFound):
    code = "file_not_found"


class NotADirectory(UsageError):
    code = "not_a_directory"


class FileSystemUnreadable(VmvaultError):
    """A volume's file system could not be parsed: damaged, or not one vmvault reads."""

    code = "file_system_unreadable"


@dataclass
class Located:
    """What a path names: a volume (``node`` None at the volume's root listing) or a node."""

    path: str
    volume: Volume | None
    node: Node | None


def split_path(path: str) -> list[str]:
    """A path's components; ``..`` and ``.`` are resolved textually, never above ``/``."""
    normal = posixpath.normpath("/" + path.strip())
    return [p for p in normal.split("/") if p]


class DiskBrowser:
    """The volumes and file systems of one disk of a point, opened as they are asked for."""

    def __init__(self, disk: BinaryIO, size: int, *, label: str) -> None:
        self.label = label  # "disk sda of point 2026..." in messages
        try:
            self.volumes = find_volumes(disk, size)
        except ExportReadError:
            raise
        except Exception as exc:  # a damaged table: the parsers raise many kinds
            raise FileSystemUnreadable(
                f"the partition table of {label} cannot be read: {exc or type(exc).__name__}"
            ) from None
        self._file_systems: dict[str, FileSystem] = {}

    def volume(self, name: str) -> Volume:
        for v in self.volumes:
            if v.name == name:
                return v
        names = ", ".join(v.name for v in self.volumes) or "none"
        raise FileNotInPoint(f"{self.label} has no volume {name!r} (its volumes: {names})")

    def file_system(self, volume: Volume) -> FileSystem:
        if volume.name in self._file_systems:
            return self._file_systems[volume.name]
        if not volume.readable:
            raise FileSystemUnreadable(
                f"volume {volume.name} of {self.label} holds {volume.fs_type}, "
                "not a file system vmvault reads (ext2/3/4, xfs, vfat, ntfs)"
            )
        try:
            fs = open_file_system(volume.fs_type, volume.opener())
        except ExportReadError:
            raise
        except Exception as exc:  # the parsers raise many kinds on a damaged file system
            raise FileSystemUnreadable(
                f"the {volume.fs_type} file system of volume {volume.name} of {self.label} "
                f"cannot be read: {exc or type(exc).__name__}"
            ) from None
        self._file_systems[volume.name] = fs
        return fs

    def locate(self, path: str) -> Located:
        parts = split_path(path)
        if not parts:
            return Located("/", None, None)
        volume = self.volume(parts[0])
        fs = self.file_system(volume)
        node = fs.root
        walked = "/" + volume.name
        for part in parts[1:]:
            if node.entry.kind != DIRECTORY:
                raise NotADirectory(f"{walked} in {self.label} is not a directory")
            node = self._child(node, part, fs, f"{walked}/{part}")
            walked = f"{walked}/{node.entry.name}"
        return Located(walked, volume, node)

    def _child(self, node: Node, name: str, fs: FileSystem, path: str) -> Node:
        folded = name if fs.case_sensitive else name.casefold()
        try:
            for child in node.children():
                child_name = child.entry.name
                if (child_name if fs.case_sensitive else child_name.casefold()) == folded:
                    return child
        except ExportReadError:
            raise
        except Exception as exc:
            raise FileSystemUnreadable(
                f"directory {path.rsplit('/', 1)[0] or '/'} of {self.label} cannot be read: "
                f"{exc or type(exc).__name__}"
            ) from None
        raise FileNotInPoint(f"{path}: no such file or directory in {self.label}")

    def listing(self, path: str) -> tuple[str, str, list[Entry]]:
        """What a path below a volume names: its path, its kind, and its entries (a
        directory's children, or the one file or link itself)."""
        located = self.locate(path)
        if located.node is None:
            raise UsageError("/ holds the disk's volumes: see describe_volumes")
        kind = located.node.entry.kind
        if kind != DIRECTORY:
            return located.path, kind, [located.node.entry]
        entries = sorted(self.children(located.node, located.path), key=_by_name)
        return located.path, kind, entries

    def children(self, node: Node, path: str) -> Iterator[Entry]:
        try:
            for child in node.children():
                yield child.entry
        except ExportReadError:
            raise
        except Exception as exc:
            raise FileSystemUnreadable(
                f"directory {path} of {self.label} cannot be read: {exc or type(exc).__name__}"
            ) from None

    def describe_volumes(self) -> list[dict[str, object]]:
        """Each volume with its file system and label (the label read when it opens)."""
        rows = []
        for v in self.volumes:
            label = ""
            if v.readable:
                try:
                    label = self.file_system(v).label
                except FileSystemUnreadable as exc:
                    log.warning("%s", exc)
            rows.append(
                {
                    "name": v.name,
                    "size": v.size,
                    "fs_type": v.fs_type,
                    "label": label,
                    "description": v.description,
                }
            )
        return rows


def _by_name(entry: Entry) -> tuple[bool, str]:
    return (entry.kind != DIRECTORY, entry.name)
