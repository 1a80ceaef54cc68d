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
disks' own file system must not fill up with copies). Before a backup that fully copies
the disks, ``make_room`` drops the VM's oldest if the copy and that reserve would not fit:
the backup matters more than yesterday's convenience. A copy is a reflink where the file
system makes them (then it costs only the blocks the VM changed since), else a full copy;
either is counted by the blocks only it holds (``own_blocks``). Each point's folder names
its VM in ``.vm``, so VMs whose disks share a folder keep their own count; why a snapshot
the policy would keep was cut (a cap, low space) is noted in ``.cut-<vm>`` beside them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from vmvault.disks.source import RawDisk
from vmvault.model.point import RecoveryPoint
from vmvault.snapshot.own_blocks import own_bytes
from vmvault.units import human_bytes
from vmvault.vault.format import ZERO_ID, DiskManifest
from vmvault.vault.vault import Vault

INSTANT_DIR = ".vmvault-instant"
OWNER_FILE = ".vm"  # in a point's folder: the VM whose snapshots it holds
CUTS_PREFIX = ".cut-"  # in a store: ".cut-<vm>", why the VM's snapshots there were cut
CUTS_KEPT = timedelta(days=8)  # longer than any policy keeps snapshots
LOW_SPACE_FRACTION = 0.10  # keep at least this much of the disks' file system free
GiB = 1024**3
LOW_SPACE = "low space on their file system"  # why snapshots went, as `vm show` says it


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
    held: int  # bytes only they hold: what removing them gives back (not a reflink's shared)


def _created(point_id: str) -> datetime | None:
    try:
        return datetime.strptime(point_id[:15], "%Y%m%dT%H%M%S")
    except ValueError:
        return None


def _held(directory: Path) -> int:
    return sum(
        own_bytes(path) for path in directory.iterdir() if path.is_file() and not path.is_symlink()
    )


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
            found.append(Kept(point_dir.name, point_dir, vm, created, _held(point_dir)))
    return sorted(found, key=lambda k: (k.created, k.point_id))


def usage(vm: str, disk_paths: Sequence[str], since: datetime | None = None) -> dict[str, Any]:
    """What ``vm``'s instant-restore snapshots hold: points, bytes only they hold on disk,
    and why snapshots of points after ``since`` were cut (``cut_by``: caps, low space)."""
    mine = [k for k in kept_snapshots(disk_paths) if k.vm in (vm, None)]
    return {
        "points": len({k.point_id for k in mine}),
        "bytes": sum(k.held for k in mine),
        "cut_by": cut_reasons(vm, disk_paths, since) if since else [],
    }


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


def _drop(kept: Kept, why: str, result: Bounded, *, cut_at: datetime | None = None) -> None:
    """Remove ``kept``; ``cut_at``: it went for a cap or space, not the policy (noted)."""
    shutil.rmtree(kept.directory, ignore_errors=True)
    result.removed.append(f"{kept.directory} ({why})")
    if cut_at is not None and kept.vm is not None:
        _note_cut(kept, why, cut_at)


def _cuts_file(store: Path, vm: str) -> Path:
    return store / f"{CUTS_PREFIX}{vm}"


# The notes lie in the VMs' storage folder, which others may write, and vmvault runs as
# root: a symlink or a FIFO planted under a note's name is never followed, read or written
# through (O_NOFOLLOW; O_NONBLOCK and a regular file only, when reading).
_NOTE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NOTE_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _read_cuts(path: Path) -> dict[str, str]:
    try:
        fd = os.open(path, _NOTE_READ)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {}
            notes = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in notes.items()} if isinstance(notes, dict) else {}


def _note_cut(kept: Kept, why: str, now: datetime) -> None:
    """Remember why ``kept`` went, so ``vm show`` can say why fewer are kept than allowed."""
    assert kept.vm is not None
    path = _cuts_file(kept.directory.parent, kept.vm)
    notes = {**_read_cuts(path), kept.point_id: why}
    recent = {
        point: reason
        for point, reason in notes.items()
        if (created := _created(point)) is not None and now - created <= CUTS_KEPT
    }
    scratch = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with os.fdopen(os.open(scratch, _NOTE_WRITE, 0o600), "w") as f:
            f.write(json.dumps(recent, sort_keys=True))
        os.replace(scratch, path)  # a reader sees the old notes or the new, never half
    except OSError:  # a note is a courtesy: a full or read-only folder loses it, not the backup
        with contextlib.suppress(OSError):
            os.unlink(scratch)


def cut_reasons(vm: str, disk_paths: Sequence[str], since: datetime) -> list[str]:
    """Why snapshots of ``vm``'s points made after ``since`` were cut, the newest's first."""
    since = since.replace(tzinfo=None)
    noted: dict[str, str] = {}
    for store in sorted({Path(p).parent / INSTANT_DIR for p in disk_paths}):
        noted.update(_read_cuts(_cuts_file(store, vm)))
    reasons: list[str] = []
    for point, why in sorted(noted.items(), reverse=True):
        created = _created(point)
        if created is not None and created > since and why not in reasons:
            reasons.append(why)
    return reasons


def _free_fraction(directory: Path) -> float:
    st = os.statvfs(directory)
    return st.f_bavail / st.f_blocks if st.f_blocks else 1.0


def _percent(fraction: float) -> str:
    """Rounded down: 9.6 % free is not "10 % free (needs 10 %)"."""
    return f"{math.floor(fraction * 100)} %"


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
    cut_at = naive_now
    if limits.vm_cap is not None:
        while mine and sum(k.held for k in mine) > limits.vm_cap:
            why = f"{vm}'s cap of {limits.vm_cap / GiB:.4g} GiB"
            _drop(mine.pop(0), why, result, cut_at=cut_at)
    for pool, cap, pool_disks in limits.pool_caps:
        in_pool = kept_snapshots(pool_disks)
        while in_pool and sum(k.held for k in in_pool) > cap:
            oldest = in_pool.pop(0)
            _drop(oldest, f"pool {pool}'s cap of {cap / GiB:.4g} GiB", result, cut_at=cut_at)
            mine = [k for k in mine if k.directory != oldest.directory]
    for directory in sorted({k.directory.parent for k in mine}):
        before = _free_fraction(directory)
        if before >= LOW_SPACE_FRACTION:
            continue
        here = [k for k in mine if k.directory.parent == directory]
        count = len(here)
        while here and _free_fraction(directory) < LOW_SPACE_FRACTION:
            _drop(here.pop(0), LOW_SPACE, result, cut_at=cut_at)
        after = _free_fraction(directory)
        still = "" if after >= LOW_SPACE_FRACTION else " (other files fill it)"
        result.warnings.append(
            f"the file system of {directory.parent} had {_percent(before)} free (needs "
            f"{_percent(LOW_SPACE_FRACTION)}); {vm}'s instant-restore snapshots there were cut "
            f"from {count} to {len(here)}, now {_percent(after)} free{still}"
        )
    return result


def make_room(vm: str, disk_paths: Sequence[str], now: datetime) -> Bounded:
    """Before a full copy of ``disk_paths``: on each file system without room for the copy
    (the disks' allocated bytes) and ``LOW_SPACE_FRACTION`` free besides, drop ``vm``'s
    oldest snapshots until there is room or none is left; a warning says what was done."""
    result = Bounded()
    by_device: dict[int, list[Path]] = {}
    for path in map(Path, disk_paths):
        by_device.setdefault(os.stat(path.parent).st_dev, []).append(path)
    for paths in by_device.values():
        folder = paths[0].parent
        copy = sum(p.stat().st_blocks * 512 for p in paths)
        st = os.statvfs(folder)
        size = st.f_blocks * st.f_frsize
        needed = copy + LOW_SPACE_FRACTION * size

        def free(folder: Path = folder) -> int:
            st = os.statvfs(folder)
            return st.f_bavail * st.f_frsize

        before = free()
        if before >= needed or not size:
            continue
        mine = [k for k in kept_snapshots([str(p) for p in paths]) if k.vm == vm]
        count = len(mine)
        while mine and free() < needed:
            _drop(mine.pop(0), LOW_SPACE, result, cut_at=now.replace(tzinfo=None))
        after = free()
        outcome = (
            f"now {_percent(after / size)} free"
            if after >= needed
            else "still too little: the copy may fail"
        )
        result.warnings.append(
            f"the file system of {folder} had {_percent(before / size)} free, too little for a "
            f"copy of {vm}'s disks ({human_bytes(copy)}) and {_percent(LOW_SPACE_FRACTION)} "
            f"kept free; {vm}'s instant-restore snapshots there were cut from {count} to "
            f"{len(mine)} to make room, {outcome}"
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
            created = _created(point_dir.name)
            if created is None or not point_dir.is_dir():
                continue  # a store's notes (.cut-<vm>), or not ours
            if now - created.replace(tzinfo=now.tzinfo) > timedelta(days=keep_days):
                shutil.rmtree(point_dir, ignore_errors=True)
                removed.append(point_dir.name)
    return removed
