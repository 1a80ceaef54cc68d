"""The volumes of a guest's disk: the partitions of its MBR or GPT table, the logical
volumes of LVM inside them, or the whole disk when it holds a file system without a table.

Each volume gets a name that is its first path component in ``vmvault files``: ``part1``
for the first partition, ``vg-lv`` for a logical volume (as /dev/mapper names it), ``disk``
for a file system on the whole disk. What a volume holds is found from its first bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger("vmvault")

WHOLE_DISK = "disk"
# MBR partition types that only hold other partitions (dissect lists the logical ones).
EXTENDED_TYPES = (0x05, 0x0F, 0x85)
PROBE_BYTES = 4096 + 16


@dataclass
class Volume:
    """One volume: ``fs_type`` is a file system vmvault reads, or what else it holds
    ("swap", "lvm", "unknown")."""

    name: str
    size: int
    fs_type: str
    opener: Callable[[], BinaryIO]
    description: str = ""
    offset: int | None = None  # where it starts on the disk (a logical volume: nowhere one)

    @property
    def readable(self) -> bool:
        return self.fs_type in ("ext2", "ext3", "ext4", "xfs", "vfat", "ntfs")


def probe(head: bytes) -> str:
    """What a volume holds, from its first bytes (at least ``PROBE_BYTES``)."""
    if len(head) >= 0x460 and head[0x438:0x43A] == b"\x53\xef":
        incompat = int.from_bytes(head[0x460:0x464], "little")
        compat = int.from_bytes(head[0x45C:0x460], "little")
        if incompat & 0x40:  # extents
            return "ext4"
        return "ext3" if compat & 0x4 else "ext2"  # has a journal
    if head[:4] == b"XFSB":
        return "xfs"
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    if head[510:512] == b"\x55\xaa" and (head[54:57] == b"FAT" or head[82:87] == b"FAT32"):
        return "vfat"
    if b"LABELONE" in (head[512:520], head[0:8], head[1024:1032], head[1536:1544]):
        return "lvm"
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    return "unknown"


def _probe(fh: BinaryIO) -> str:
    fh.seek(0)
    return probe(fh.read(PROBE_BYTES))


def find_volumes(disk: BinaryIO, size: int) -> list[Volume]:
    """The volumes of a disk, in table order; an empty list if nothing is recognised."""
    whole = _probe(disk)
    if whole not in ("unknown", "lvm"):  # a file system on the whole disk, no table
        return [Volume(WHOLE_DISK, size, whole, lambda: disk, offset=0)]
    if whole == "lvm":
        return _logical_volumes([disk])
    from dissect.volume.disk import Disk
    from dissect.volume.exceptions import DiskError

    try:
        disk.seek(0)
        table = Disk(disk)
    except (DiskError, EOFError, ValueError) as exc:
        log.debug("no partition table: %s", exc)
        return []
    volumes: list[Volume] = []
    physical: list[BinaryIO] = []
    for part in table.partitions:
        if part.type in EXTENDED_TYPES or part.size <= 0:
            continue
        kind = _probe(part.open())
        name = f"part{part.number}"
        if kind == "lvm":
            physical.append(part.open())
        volumes.append(
            Volume(name, part.size, kind, part.open, str(part.name or ""), offset=part.offset)
        )
    volumes.extend(_logical_volumes(physical))
    return volumes


def _logical_volumes(physical: list[BinaryIO]) -> list[Volume]:
    """The logical volumes of the LVM volume groups on ``physical``: only groups whose
    physical volumes are all on this disk can be read."""
    if not physical:
        return []
    from dissect.volume.lvm import LVM2

    try:
        vg = LVM2(physical).vg
    except Exception as exc:  # dissect raises its own and plain errors for what it cannot use
        log.warning("the LVM volume group on this disk cannot be read: %s", exc)
        return []
    volumes = []
    for lv in vg.lv:
        if not lv.is_visible:
            continue
        try:
            fh = lv.open()
            kind = _probe(fh)
        except Exception as exc:  # a logical volume on a missing physical volume
            log.warning("logical volume %s/%s cannot be read: %s", vg.name, lv.name, exc)
            continue
        size = fh.seek(0, 2)
        name = f"{_dm(vg.name)}-{_dm(lv.name)}"  # as /dev/mapper names it
        volumes.append(Volume(name, size, kind, lv.open, f"{vg.name}/{lv.name}"))
    return volumes


def _dm(name: str) -> str:
    """A volume group's or logical volume's name as device-mapper writes it in a pair."""
    return name.replace("-", "--")
