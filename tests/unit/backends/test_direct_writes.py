"""Large objects of a directory vault are written around the page cache (O_DIRECT) where
the file system takes it, and through it where it does not: the same bytes either way."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmvault.backends import directio
from vmvault.backends.local import TMP_PREFIX, LocalBackend


def _parts(total: int) -> list[bytes]:
    """Unaligned pieces, as a pack's sealed blobs are."""
    data = os.urandom(total)
    cuts = [0, 1, 4097, 65_539, total // 2 + 3, total]
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


@pytest.mark.parametrize("total", [directio.DIRECT_MIN, directio.DIRECT_MIN + 12_345, 3 << 20])
def test_a_large_object_is_written_direct_with_its_exact_bytes_and_length(
    tmp_path: Path, total: int
) -> None:
    backend = LocalBackend(tmp_path)
    parts = _parts(total)
    backend.put("data/ab/pack1", parts)
    assert backend.get("data/ab/pack1") == b"".join(parts)
    assert backend.size("data/ab/pack1") == total
    assert backend._direct, "ext4 takes O_DIRECT: the backend must still be using it"
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TMP_PREFIX)]


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A real file system that refuses O_DIRECT (ramfs answers EINVAL)."""
    mountpoint = tmp_path / "ramfs"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_file_system_without_o_direct_gets_the_same_bytes_buffered(ramfs: Path) -> None:
    backend = LocalBackend(ramfs)
    parts = _parts(2 << 20)
    backend.put("data/cd/pack2", parts)
    assert backend.get("data/cd/pack2") == b"".join(parts)
    assert not backend._direct  # refused once, never tried again
    backend.put("data/cd/pack3", parts)
    assert backend.get("data/cd/pack3") == b"".join(parts)
    # the refused open created its file before refusing: nothing of it is left
    assert sorted(p.name for p in (ramfs / "data" / "cd").iterdir()) == ["pack2", "pack3"]


def test_direct_writes_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMVAULT_DIRECT_IO", "0")
    backend = LocalBackend(tmp_path)
    assert not backend._direct
    parts = _parts(2 << 20)
    backend.put("data/ef/pack4", parts)
    assert backend.get("data/ef/pack4") == b"".join(parts)


def test_a_small_object_or_no_fsync_is_written_buffered(tmp_path: Path) -> None:
    assert not LocalBackend(tmp_path, fsync=False)._direct
    backend = LocalBackend(tmp_path)
    backend.put("config", b"small")
    assert backend.get("config") == b"small"
