"""What QEMU and qemu-img say about a live VM's block devices, read for ``qemu_live``.

``find_node`` picks a disk's format node out of QMP's ``query-block`` and
``query-named-block-nodes`` answers; ``allocated_ranges`` reads which clusters a backup
target holds (``qemu-img map``), which for an incremental target are the change ranges;
``format_bytes`` sizes them for the disk's note. They only read: every decision about
bitmaps and jobs stays in ``qemu_live``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmvault.snapshot.base import SnapshotError

# Drivers whose node is not the one the guest's image format lives in: a bitmap or a
# backup source must be the format node (persistent bitmaps exist only in qcow2).
_NOT_FORMAT_NODES = frozenset(
    {
        "file",
        "host_device",
        "host_cdrom",
        "throttle",
        "copy-on-read",
        "copy-before-write",
        "snapshot-access",
        "preallocate",
        "compress",
        "blkdebug",
        "blkverify",
        "blklogwrites",
        "backup-top",
    }
)


def find_node(
    path: str, devices: Sequence[dict[str, Any]], nodes: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The format node whose image file is ``path``.

    The protocol node (``file``) and filters show the same file name; the format node is
    the one that holds bitmaps and that the guest's writes pass through. Where several
    remain, the one a device (or ``-drive``) uses wins.
    """
    candidates = [
        n
        for n in nodes
        if n.get("drv") not in _NOT_FORMAT_NODES and _same_file(n.get("file"), path)
    ]
    if len(candidates) > 1:
        in_use = {d["inserted"]["node-name"] for d in devices if "inserted" in d}
        candidates = [n for n in candidates if n["node-name"] in in_use] or candidates
    if not candidates:
        known = sorted({n.get("file", "?") for n in nodes if n.get("drv") not in _NOT_FORMAT_NODES})
        raise SnapshotError(
            f"the VM has no block node for {path} (its images: {', '.join(known) or 'none'})"
        )
    if len(candidates) > 1:
        names = ", ".join(n["node-name"] for n in candidates)
        raise SnapshotError(f"several block nodes of the VM use {path}: {names}")
    return candidates[0]


def _same_file(name: object, path: str) -> bool:
    if not isinstance(name, str) or name.startswith(("json:", "/dev/fdset/")):
        return False
    try:
        return os.path.samefile(name, path)
    except OSError:
        return os.path.realpath(name) == os.path.realpath(path)


def allocated_ranges(image: Path) -> list[tuple[int, int]]:
    """Byte ranges the qcow2 ``image`` itself holds, including clusters written as zeros.

    A guest that zeroes or discards a range makes QEMU copy it as a zero cluster: that is
    a change too, which SEEK_DATA (zero clusters are holes) would miss. ``present`` tells
    a zero cluster (allocated here) from an unallocated one.
    """
    result = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", "qcow2", str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SnapshotError(f"qemu-img map {image}: {result.stderr.strip()}")
    ranges: list[tuple[int, int]] = []
    for entry in json.loads(result.stdout):
        if "present" not in entry:
            raise SnapshotError("qemu-img is too old to tell zero clusters from holes (need 6.2+)")
        if entry["present"]:
            lo, hi = int(entry["start"]), int(entry["start"]) + int(entry["length"])
            if ranges and ranges[-1][1] == lo:
                ranges[-1] = (ranges[-1][0], hi)
            else:
                ranges.append((lo, hi))
    return ranges


# Not vmvault.units.human_bytes: that prints one decimal ("192.0 KiB", "1.2 MiB"), this
# three significant digits ("192 KiB", "1.25 MiB"), and the notes kept in points read so.
def format_bytes(n: int) -> str:
    """A size for people: 192 KiB, 3.5 MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 100 else f"{size:.3g} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def bitmap_of(bitmap_name: str, generation: str) -> str:
    """A dirty bitmap's name: vmvault's name for the vault, then the point's generation."""
    return f"{bitmap_name}-{generation}"


def judge_bitmap(
    bitmaps: Sequence[dict[str, Any]],
    path: str,
    bitmap_name: str,
    parent_generation: str | None,
) -> tuple[str | None, str]:
    """The parent's bitmap among a disk's ``bitmaps`` if it can be trusted, else None and the
    reason (for the point's notes). Bitmaps are named ``<bitmap_name>-<generation>``."""
    if parent_generation is None:
        return None, "full read (no parent generation: first backup of this disk)"
    wanted = bitmap_of(bitmap_name, parent_generation)
    found = {b["name"]: b for b in bitmaps}
    bitmap = found.get(wanted)
    if bitmap is None:
        others = sorted(n for n in found if n.startswith(f"{bitmap_name}-"))
        why = (
            f"bitmap {wanted!r} missing; found {', '.join(map(repr, others))} of another point"
            if others
            else f"bitmap {wanted!r} missing — VM restarted without saving it, or new disk"
        )
    elif bitmap.get("busy"):
        raise SnapshotError(
            f"dirty bitmap {wanted!r} of {path} is in use: is another backup of this VM running?"
        )
    elif bitmap.get("inconsistent"):
        why = f"bitmap {wanted!r} inconsistent — QEMU was not shut down cleanly"
    elif not bitmap.get("recording", True):
        why = f"bitmap {wanted!r} disabled (not recording)"
    else:
        return wanted, f"incremental from bitmap {wanted!r}"
    return None, f"no valid dirty bitmap ({why}): full read"
