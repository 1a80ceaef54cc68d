"""Snapshot providers: turn a VM's disk paths into stable point-in-time images.

``take`` runs while the VM is quiesced (scripts ran, file systems frozen) and must be quick:
only a reflink clone or an in-place read qualifies for a running VM of real size. ``FullCopy``
exists for small disks and tests, and must be asked for explicitly. ``release`` removes what
``take`` made, always, whether the transfer worked or not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from vmvault.disks.source import RawDisk
from vmvault.snapshot.base import SnapshotError, SnapshotProvider
from vmvault.snapshot.lvm import LvmSnapshot, logical_volume

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


class InPlace:
    """A stopped VM: its disks do not change, so they are read where they are."""

    name = "in-place"

    def take(self, paths: Sequence[str]) -> list[str]:
        return list(paths)

    def release(self) -> None:
        return None


class _CopyingProvider(ABC):
    """Shared part of the providers that write their images next to the originals."""

    name = "copy"

    def __init__(self) -> None:
        self._dirs: list[Path] = []

    def _target(self, path: str) -> Path:
        source = Path(path)
        # Same directory as the disk: a reflink needs the same file system, and a copy
        # should not fill another one.
        snap_dir = Path(tempfile.mkdtemp(prefix=".vmvault-snap-", dir=source.parent))
        self._dirs.append(snap_dir)
        return snap_dir / source.name

    def take(self, paths: Sequence[str]) -> list[str]:
        images = []
        try:
            for path in paths:
                target = self._target(path)
                self._copy(Path(path), target)
                images.append(str(target))
        except BaseException:
            self.release()
            raise
        return images

    @abstractmethod
    def _copy(self, source: Path, target: Path) -> None:
        """Make ``target`` a point-in-time image of ``source``."""

    def release(self) -> None:
        for snap_dir in self._dirs:
            shutil.rmtree(snap_dir, ignore_errors=True)
        self._dirs.clear()


class ReflinkCopy(_CopyingProvider):
    """A copy-on-write clone (FICLONE): instant, costs no space until the VM writes."""

    name = "reflink"

    def _copy(self, source: Path, target: Path) -> None:
        with open(source, "rb") as src, open(target, "wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                    raise SnapshotError(
                        f"the file system of {source} cannot make reflink copies "
                        '(use btrfs or XFS with reflink, or set snapshot = "copy")'
                    ) from None
                raise SnapshotError(f"reflink copy of {source} failed: {exc.strerror}") from None


class FullCopy(_CopyingProvider):
    """A sparse byte copy: correct, but as slow as the disk is large (small disks, tests)."""

    name = "copy"

    def _copy(self, source: Path, target: Path) -> None:
        sparse_copy(source, target)


def sparse_copy(source: Path, target: Path) -> None:
    """Copy data extents as data and holes as holes (copy_file_range: no user-space copy)."""
    try:
        with RawDisk.open(source) as src, open(target, "wb") as dst:
            dst.truncate(src.size)
            for start, end in src.data_ranges(0, src.size):
                _copy_range(src.fd, dst.fileno(), start, end)
    except OSError as exc:
        raise SnapshotError(f"copy of {source} failed: {exc.strerror}") from None


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    pos = start
    while pos < end:
        copied = os.copy_file_range(src, dst, end - pos, pos, pos)
        if copied == 0:
            raise OSError(errno.EIO, "source shrank while it was being copied")
        pos += copied


def reflink_supported(directory: str) -> bool:
    """Whether files in ``directory`` can be cloned (tried on a scratch file, then removed)."""
    with (
        contextlib.suppress(OSError),
        tempfile.NamedTemporaryFile(dir=directory, prefix=".vmvault-probe-") as a,
        tempfile.NamedTemporaryFile(dir=directory, prefix=".vmvault-probe-") as b,
    ):
        a.write(b"x")
        a.flush()
        fcntl.ioctl(b.fileno(), FICLONE, a.fileno())
        return True
    return False


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def choose_provider(requested: str, running: bool, paths: Sequence[str]) -> SnapshotProvider:
    """The inventory's choice, or for ``auto``: stopped -> in place; running -> an LVM
    snapshot for logical volumes, a reflink clone for image files."""
    providers: dict[str, type[SnapshotProvider]] = {
        "in-place": InPlace,
        "reflink": ReflinkCopy,
        "copy": FullCopy,
    }
    if requested == "lvm":
        return LvmSnapshot()
    if requested != "auto":
        if requested not in providers:
            raise SnapshotError(
                f"unknown snapshot provider {requested!r} "
                f"(known: auto, {', '.join(providers)}, lvm, qemu-live)"
            )
        if requested == "in-place" and running:
            raise SnapshotError("a running VM's disks change under the reader: in-place refused")
        return providers[requested]()
    if not running:
        return InPlace()
    if paths and all(_is_block_device(p) for p in paths):
        try:
            for path in paths:
                logical_volume(path)
        except SnapshotError as exc:
            raise SnapshotError(
                f"the VM is running on block devices that LVM cannot snapshot ({exc.message}): "
                "stop the VM, or give it a live QEMU socket (qmp)"
            ) from None
        return LvmSnapshot()
    directories = {str(Path(p).parent) for p in paths}
    if all(reflink_supported(d) for d in directories):
        return ReflinkCopy()
    raise SnapshotError(
        "the VM is running and its disks' file system cannot make reflink copies: "
        'set snapshot = "copy" in the inventory (slow for big disks) or stop the VM'
    )
