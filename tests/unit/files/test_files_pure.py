"""The pure parts of file-level restore: probing volumes, names, paths, holes."""

from __future__ import annotations

import pytest

from vmvault.files.browse import split_path
from vmvault.files.extract import safe_name
from vmvault.files.filesystems import runs_to_ranges
from vmvault.files.volumes import probe


def _at(offset: int, data: bytes, size: int = 8192) -> bytes:
    head = bytearray(size)
    head[offset : offset + len(data)] = data
    return bytes(head)


def test_probe_names_what_a_volume_holds() -> None:
    ext4 = bytearray(_at(0x438, b"\x53\xef"))
    ext4[0x460] = 0x40  # extents
    assert probe(bytes(ext4)) == "ext4"
    ext3 = bytearray(_at(0x438, b"\x53\xef"))
    ext3[0x45C] = 0x4  # a journal
    assert probe(bytes(ext3)) == "ext3"
    assert probe(_at(0x438, b"\x53\xef")) == "ext2"
    assert probe(_at(0, b"XFSB")) == "xfs"
    assert probe(_at(3, b"NTFS    ")) == "ntfs"
    fat = bytearray(_at(82, b"FAT32"))
    fat[510:512] = b"\x55\xaa"
    assert probe(bytes(fat)) == "vfat"
    assert probe(_at(82, b"FAT32")) == "unknown"  # no boot signature
    assert probe(_at(512, b"LABELONE")) == "lvm"
    assert probe(_at(4086, b"SWAPSPACE2")) == "swap"
    assert probe(bytes(8192)) == "unknown"
    assert probe(b"") == "unknown"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\0y", "/"])
def test_unsafe_names_are_refused(name: str) -> None:
    assert not safe_name(name)


def test_safe_names_pass() -> None:
    assert all(safe_name(n) for n in ("hostname", ".bashrc", "...", "a b", "ü"))


def test_paths_never_climb_above_the_root() -> None:
    assert split_path("/part1/etc/../etc/./hostname") == ["part1", "etc", "hostname"]
    assert split_path("../../../etc") == ["etc"]
    assert split_path("/") == [] and split_path("") == []


def test_runs_become_byte_ranges_with_holes_left_out() -> None:
    # 2 blocks of hole, 3 of data, 1 hole, 1 data; the file ends inside the last block
    runs = [(None, 2), (100, 3), (None, 1), (200, 1)]
    assert runs_to_ranges(runs, 4096, 6 * 4096 + 10) == [(8192, 12288), (24576, 10)]
    assert runs_to_ranges([(5, 2), (7, 2)], 1024, 4096) == [(0, 4096)]  # adjacent merge
    assert runs_to_ranges([(None, 4)], 1024, 4096) == []
