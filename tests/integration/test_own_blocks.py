"""own_bytes on real file systems: a reflink clone on XFS holds almost nothing of its own
until the file it shares blocks with is written; tmpfs (no FIEMAP) counts allocated blocks."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.fskit import reflink_xfs, tmpfs
from vmvault.snapshot.own_blocks import EXTENTS_PER_CALL, own_bytes
from vmvault.snapshot.providers import FICLONE

MiB = 1 << 20


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    with reflink_xfs(tmp_path) as mountpoint:
        yield mountpoint


def _clone(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())


def test_a_clone_holds_only_what_the_original_rewrote(xfs: Path) -> None:
    disk = xfs / "disk.img"
    with open(disk, "wb") as f:
        f.write(os.urandom(8 * MiB))
        os.fsync(f.fileno())
    assert own_bytes(disk) == 8 * MiB  # nothing shared yet
    clone = xfs / "clone.img"
    _clone(disk, clone)
    assert own_bytes(clone) == 0 and own_bytes(disk) == 0  # every block is shared
    with open(disk, "r+b") as f:  # the VM writes after the snapshot: the blocks split
        f.seek(MiB)
        f.write(os.urandom(2 * MiB))
    os.sync()
    assert own_bytes(clone) == 2 * MiB
    assert os.stat(clone).st_blocks * 512 == 8 * MiB  # what st_blocks would have claimed


def test_many_extents_are_paged_through(xfs: Path) -> None:
    # Every other 4 KiB block of the original rewritten after the clone: the clone's map
    # alternates shared and own extents, many more than one ioctl returns.
    blocks = 3 * EXTENTS_PER_CALL
    disk = xfs / "disk.img"
    with open(disk, "wb") as f:
        f.write(os.urandom(2 * blocks * 4096))
        os.fsync(f.fileno())
    clone = xfs / "clone.img"
    _clone(disk, clone)
    with open(disk, "r+b") as f:
        for b in range(blocks):
            f.seek(2 * b * 4096)
            f.write(b"\1" * 4096)
    os.sync()  # XFS settles the last block's sharing only then (fsync is not enough)
    assert own_bytes(clone) == blocks * 4096


def test_without_fiemap_allocated_blocks_are_counted(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "t", "8m") as folder:
        path = folder / "data"
        with open(path, "wb") as f:
            f.truncate(4 * MiB)
            f.write(os.urandom(MiB))
        assert own_bytes(path) == MiB
