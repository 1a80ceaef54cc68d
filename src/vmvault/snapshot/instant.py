"""Instant restore: a VM's snapshot images kept beside its disks for a few days.

Azure keeps a recovery point's snapshots for 1 to 5 days ("instant restore"): a restore from
them needs no transfer from the vault. Here, after a backup whose provider copied the disks
(reflink or copy), each raw image is kept as
``<disk's directory>/.vmvault-instant/<point id>/<disk name>`` instead of being removed, for
the policy's ``instant_restore_days``. A restore that finds one copies it locally, then
proves it against the point's block records (every chunk re-hashed with the vault's key),
and uses the vault only if the copy does not match.

The store is bounded after every backup that adds to it (``bound``): snapshots older than
the policy's days go, then all but the newest the policy's schedule needs (two for a daily
backup kept two days, however many backups ran), then the oldest while the VM's or a
pool's cap (``instant_restore_max_gib``) is exceeded, then the oldest of the VM while the
file system holding them has less than ``LOW_SPACE_FRACTION`` free (with a warning: the
disks' own file system must not fill up with copies). A copy is a reflink where the file
system makes them (then it costs only the blocks the VM changed since), else a full copy.
Each point's folder names its VM in ``.vm``, so VMs whose disks share a folder keep their
own count.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from vmvault.disks.source import RawDisk
from vmvault.model.point import RecoveryPoint
from vmvault.vault.format import ZERO_ID, DiskManifest
from vmvault.vault.vault import Vault

INSTANT_DIR = ".vmvault-instant"
OWNER_FILE = ".vm"  # in a point's folder: the VM whose snapshots it holds
LOW_SPACE_FRACTION = 0.10  # keep at least this much of the disks' file system free
GiB = 1024**3


def _place(disk_path: str, point_id: str, name: str) -> Path:
    return Path(disk_path).parent / INSTANT_DIR / point_id / name


def keep(point: RecoveryPoint, disk_paths: dict[str, str], images: Sequence[str]) -> list[str]:
    """Move the raw snapshot images of ``point`` into the instant-restore store."""
    kept = []
    for disk, image in zip(point["disks"], images, strict=True):
        if disk.get("format", "raw") != "raw":
            continue  # a qcow2 file's bytes are not the guest's: not checkable chunk by chunk
        target = _place(disk_paths[disk["name"]], point["id"], disk["name"])
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / OWNER_FILE).write_text(point["vm"])
        os.replace(image, target)  # same file system as the snapshot: a rename
        kept.append(str(target))
    return kept


@dataclass(frozen=True)
class Kept:
    """One point's snapshots in one disk folder's store."""

    point_id: str
    directory: Path
    vm: str | None  # None: kept before folders named their VM
    created: datetime
    allocated: int  # bytes the file system holds for them (a reflink's shared blocks too)


def _created(point_id: str) -> datetime | None:
    try:
        return datetime.strptime(point_id[:15], "%Y%m%dT%H%M%S")
    except ValueError:
        return None


def _allocated(directory: Path) -> int:
    total = 0
    for path in directory.iterdir():
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_blocks * 512
    return total


def kept_snapshots(disk_paths: Iterable[str]) -> list[Kept]:
    """Every point's snapshots in the stores beside ``disk_paths``, oldest first."""
    found: list[Kept] = []
    for directory in sorted({Path(p).parent / INSTANT_DIR for p in disk_paths}):
        if not directory.is_dir():
            continue
        for point_dir in directory.iterdir():
            created = _created(point_dir.name)
            if created is None or not point_dir.is_dir() or point_dir.is_symlink():
                continue
            owner = point_dir / OWNER_FILE
            vm = owner.read_text().strip() if owner.is_file() else None
            found.append(Kept(point_dir.name, point_dir, vm, created, _allocated(point_dir)))
    return sorted(found, key=lambda k: (k.created, k.point_id))


def usage(vm: str, disk_paths: Iterable[str]) -> dict[str, int]:
    """What ``vm``'s instant-restore snapshots hold: points and bytes on disk."""
    mine = [k for k in kept_snapshots(disk_paths) if k.vm in (vm, None)]
    return {"points": len({k.point_id for k in mine}), "bytes": sum(k.allocated for k in mine)}


def snapshots_needed(days: int, kind: str, every_hours: int | None) -> int:
    """How many backups' snapshots a policy keeping ``days`` of them can use: one per
    backup its schedule starts in that time (a weekly schedule's single one, too)."""
    per_day = {"daily": 1.0, "weekly": 1 / 7}.get(kind, 24 / (every_hours or 24))
    return max(1, math.ceil(days * per_day))


@dataclass
class Limits:
    """What one VM's store may hold (``None``: no cap of that kind)."""

    keep_days: int
    max_points: int
    vm_cap: int | None = None
    pool_caps: list[tuple[str, int, list[str]]] = field(default_factory=list)  # name, cap, disks


@dataclass
class Bounded:
    removed: list[str] = field(default_factory=list)  # point folders removed
    warnings: list[str] = field(default_factory=list)


def _drop(kept: Kept, why: str, result: Bounded) -> None:
    shutil.rmtree(kept.directory, ignore_errors=True)
    result.removed.append(f"{kept.directory} ({why})")


def _free_fraction(directory: Path) -> float:
    st = os.statvfs(directory)
    return st.f_bavail / st.f_blocks if st.f_blocks else 1.0


def bound(vm: str, disk_paths: Sequence[str], limits: Limits, now: datetime) -> Bounded:
    """Bring ``vm``'s store (and the pools it uses) within ``limits``, oldest first."""
    result = Bounded()
    naive_now = now.replace(tzinfo=None)
    mine = [k for k in kept_snapshots(disk_paths) if k.vm == vm]
    for k in list(mine):
        if naive_now - k.created > timedelta(days=limits.keep_days):
            _drop(k, "older than the policy keeps", result)
            mine.remove(k)
    newest = sorted({k.point_id for k in mine})
    extra = set(newest[: max(0, len(newest) - limits.max_points)])
    for k in [k for k in mine if k.point_id in extra]:
        _drop(k, f"the policy needs only the newest {limits.max_points}", result)
        mine.remove(k)
    if limits.vm_cap is not None:
        while mine and sum(k.allocated for k in mine) > limits.vm_cap:
            _drop(mine.pop(0), f"{vm}'s cap of {limits.vm_cap / GiB:g} GiB", result)
    for pool, cap, pool_disks in limits.pool_caps:
        in_pool = kept_snapshots(pool_disks)
        while in_pool and sum(k.allocated for k in in_pool) > cap:
            oldest = in_pool.pop(0)
            _drop(oldest, f"pool {pool}'s cap of {cap / GiB:g} GiB", result)
            mine = [k for k in mine if k.directory != oldest.directory]
    for directory in sorted({k.directory.parent for k in mine}):
        if _free_fraction(directory) >= LOW_SPACE_FRACTION:
            continue
        here = [k for k in mine if k.directory.parent == directory]
        while here and _free_fraction(directory) < LOW_SPACE_FRACTION:
            _drop(here.pop(0), "its file system is low on space", result)
        left = _free_fraction(directory)
        result.warnings.append(
            f"the file system of {directory.parent} has {left:.0%} free; {vm}'s "
            f"instant-restore snapshots there were cut to {len(here)} to keep "
            f"{LOW_SPACE_FRACTION:.0%} free"
        )
    return result


def find(point: RecoveryPoint, disk_name: str) -> Path | None:
    config = {d["name"]: d for d in point.get("vm_config", {}).get("disks", [])}
    if disk_name not in config:
        return None
    path = _place(config[disk_name]["path"], point["id"], disk_name)
    return path if path.is_file() else None


def matches(vault: Vault, manifest: DiskManifest, image: Path) -> bool:
    """Whether ``image`` holds exactly the disk the manifest describes (keyed chunk ids)."""
    with RawDisk.open(image) as disk:
        if disk.size != manifest.size:
            return False
        buffer = bytearray(manifest.block_size)
        for b, record_id in enumerate(manifest.records):
            start = b * manifest.block_size
            length = min(manifest.block_size, manifest.size - start)
            view = memoryview(buffer)[:length]
            disk.read_into(view, start)
            if record_id == ZERO_ID:
                if view.tobytes().count(0) != length:
                    return False
                continue
            found = vault.records([record_id])[record_id]
            if isinstance(found, Exception):
                return False
            for c, chunk_id in enumerate(found):
                piece = view[c * manifest.chunk_size : (c + 1) * manifest.chunk_size]
                if chunk_id == ZERO_ID:
                    if piece.tobytes().count(0) != len(piece):
                        return False
                elif vault.keys.chunk_id(piece) != chunk_id:
                    return False
    return True


def expire(disk_paths: Sequence[str], keep_days: int, now: datetime) -> list[str]:
    """Remove instant-restore images older than ``keep_days`` (by their point's time)."""
    removed = []
    for directory in {Path(p).parent / INSTANT_DIR for p in disk_paths}:
        if not directory.is_dir():
            continue
        for point_dir in directory.iterdir():
            created = datetime.strptime(point_dir.name[:15], "%Y%m%dT%H%M%S").replace(
                tzinfo=now.tzinfo
            )
            if now - created > timedelta(days=keep_days):
                shutil.rmtree(point_dir, ignore_errors=True)
                removed.append(point_dir.name)
    return removed
