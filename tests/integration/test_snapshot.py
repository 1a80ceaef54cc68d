"""Snapshot providers on real file systems: reflink on XFS, refused on ext4, sparse copies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import same_content
from support.fskit import loop_mount, reflink_xfs
from vmvault.snapshot.base import SnapshotError
from vmvault.snapshot.providers import (
    FullCopy,
    InPlace,
    ReflinkCopy,
    choose_provider,
)

MiB = 1 << 20


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    with reflink_xfs(tmp_path) as mountpoint:
        yield mountpoint


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    with loop_mount(tmp_path, ["mkfs.ext4", "-q", "-F"], "ext4") as mountpoint:
        yield mountpoint


def _disk(directory: Path, name: str = "os.img") -> Path:
    path = directory / name
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
        f.seek(3 * MiB)
        f.write(os.urandom(MiB))
    return path


def test_reflink_snapshot_is_point_in_time_and_released(xfs: Path) -> None:
    disk = _disk(xfs)
    before = disk.read_bytes()
    provider = choose_provider("auto", running=True, paths=[str(disk)])
    assert isinstance(provider, ReflinkCopy)
    [image] = provider.take([str(disk)])
    with open(disk, "r+b") as f:  # the "guest" writes after the snapshot
        f.seek(3 * MiB)
        f.write(b"\xff" * 4096)
    assert Path(image).read_bytes() == before
    provider.release()
    assert not Path(image).exists()
    assert not list(xfs.glob(".vmvault-snap-*"))


def test_reflink_refused_on_ext4_with_advice(ext4: Path) -> None:
    disk = _disk(ext4)
    with pytest.raises(SnapshotError, match='snapshot = "copy"'):
        choose_provider("auto", running=True, paths=[str(disk)])
    provider = ReflinkCopy()
    with pytest.raises(SnapshotError, match="cannot make reflink copies"):
        provider.take([str(disk)])
    assert not list(ext4.glob(".vmvault-snap-*"))  # a failed take leaves nothing behind


def test_full_copy_is_sparse_and_identical(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    provider = FullCopy()
    [image] = provider.take([str(disk)])
    assert same_content(disk, Path(image))
    assert os.stat(image).st_blocks * 512 <= 2 * MiB
    provider.release()
    assert not Path(image).parent.exists()


def test_choose_provider_rules(tmp_path: Path) -> None:
    disk = str(_disk(tmp_path))
    assert isinstance(choose_provider("auto", running=False, paths=[disk]), InPlace)
    assert isinstance(choose_provider("copy", running=True, paths=[disk]), FullCopy)
    with pytest.raises(SnapshotError, match="in-place refused"):
        choose_provider("in-place", running=True, paths=[disk])
    with pytest.raises(SnapshotError, match="unknown snapshot provider"):
        choose_provider("magic", running=False, paths=[disk])
