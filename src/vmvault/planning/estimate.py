"""How long will a VM's backup take? The seed's best-case table until history knows better.

Pure functions. Throughput is per disk: the seed gives 160 Mbps for an initial backup and
640 Mbps for an incremental one, and disks of one VM run in parallel, each within the
per-disk cap (60 MB/s, "Target Throughput for Single Blob"). Once a VM has backups of a kind
(initial or incremental), the recent ones replace the table for that kind: each disk's bytes
read over its seconds, the bytes an incremental read and found changed, and the time the
whole job took beyond its slowest disk (snapshot, commit). Every figure says where it came
from. Units: Mbps = 10^6 bit/s, MB = 10^6 bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

INITIAL_MBPS = 160.0
INCREMENTAL_MBPS = 640.0
DISK_CAP_MB_S = 60.0
DEFAULT_DAILY_CHANGE = 0.05  # Azure sees 2-7 % daily churn on typical VMs
DEFAULT_SNAPSHOT_SECONDS = 60.0
RECENT = 3  # backups of a kind that make a measurement
SEED_TABLE = "Azure's rates"


@dataclass(frozen=True)
class DiskLoad:
    """One disk as the planner sees it: the data on it (used, not provisioned)."""

    name: str
    used_bytes: int
    role: str = "data"  # temporary disks are not backed up


@dataclass(frozen=True)
class DiskRun:
    """One disk of a past backup, as its recovery point recorded it."""

    name: str
    read_bytes: int  # read from the disk (a change hint may have spared the rest)
    changed_bytes: int  # found changed against the parent (all data for a full backup)
    seconds: float  # the disk's transfer, from its first read to its last block stored


@dataclass(frozen=True)
class PastBackup:
    """A successful backup of a VM: its disks, and the whole job's wall time if known."""

    initial: bool  # a full backup (no parent point)
    disks: Sequence[DiskRun]
    wall_seconds: float | None = None


@dataclass(frozen=True)
class Measured:
    """What a VM's recent backups of one kind measured; per disk, and for the VM as a whole
    (for a disk that has no history of its own)."""

    backups: int
    rates: Mapping[str, float]  # disk -> bytes/s (bytes read over seconds)
    vm_rate: float
    reads: Mapping[str, float]  # disk -> mean bytes read
    changed: Mapping[str, float]  # disk -> mean changed bytes
    overhead_seconds: float | None  # mean job time beyond the slowest disk

    @property
    def source(self) -> str:
        return f"measured ({self.backups} backup{'s' if self.backups != 1 else ''})"


def measure(
    history: Sequence[PastBackup], *, initial: bool, recent: int = RECENT
) -> Measured | None:
    """The last ``recent`` backups of one kind, summed up; None before there is one that
    read something."""
    runs = [b for b in history if b.initial == initial and any(d.seconds > 0 for d in b.disks)]
    runs = runs[-recent:]
    if not runs:
        return None
    read: dict[str, float] = {}
    seconds: dict[str, float] = {}
    changed: dict[str, list[int]] = {}
    reads: dict[str, list[int]] = {}
    for backup in runs:
        for d in backup.disks:
            reads.setdefault(d.name, []).append(d.read_bytes)
            changed.setdefault(d.name, []).append(d.changed_bytes)
            if d.seconds > 0:
                read[d.name] = read.get(d.name, 0.0) + d.read_bytes
                seconds[d.name] = seconds.get(d.name, 0.0) + d.seconds
    overheads = [
        max(b.wall_seconds - max(d.seconds for d in b.disks), 0.0)
        for b in runs
        if b.wall_seconds is not None and b.disks
    ]
    return Measured(
        len(runs),
        {n: read[n] / seconds[n] for n in read if read[n] > 0},
        sum(read.values()) / sum(seconds.values()),
        {n: sum(v) / len(v) for n, v in reads.items()},
        {n: sum(v) / len(v) for n, v in changed.items()},
        sum(overheads) / len(overheads) if overheads else None,
    )


@dataclass(frozen=True)
class DiskEstimate:
    name: str
    transfer_bytes: float  # what this backup reads and processes
    rate: float  # bytes/s, within the per-disk cap

    @property
    def seconds(self) -> float:
        return self.transfer_bytes / self.rate if self.rate else 0.0


@dataclass(frozen=True)
class Estimate:
    kind: str  # "initial" or "incremental"
    read_bytes: int  # the data on the non-temporary disks (used, not provisioned)
    changed_bytes: int  # the data expected to have changed (all of it for an initial backup)
    transfer_seconds: float  # the slowest disk, disks in parallel
    snapshot_seconds: float
    queue_wait_seconds: float
    rate_source: str  # SEED_TABLE or "measured (N backups)"
    changed_source: str = ""  # "all data", "measured (N backups)" or "daily change 5 %"
    snapshot_source: str = ""  # "measured (N backups)" or "default"
    disks: tuple[DiskEstimate, ...] = field(default=())

    @property
    def total_seconds(self) -> float:
        return self.queue_wait_seconds + self.snapshot_seconds + self.transfer_seconds

    @property
    def rate(self) -> float:
        """Bytes/s of the slowest disk (all disks share it under the seed's table)."""
        slowest = max(self.disks, key=lambda d: d.seconds, default=None)
        return slowest.rate if slowest else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "data_bytes": self.read_bytes,
            "changed_bytes": self.changed_bytes,
            "transfer_s": round(self.transfer_seconds, 3),
            "snapshot_s": round(self.snapshot_seconds, 3),
            "total_s": round(self.total_seconds, 3),
            "rate_mb_s": round(self.rate / 1e6, 2),
            "rate_source": self.rate_source,
            "changed_source": self.changed_source,
            "snapshot_source": self.snapshot_source,
        }


def disk_rate(mbps: float, cap_mb_s: float = DISK_CAP_MB_S) -> float:
    """Bytes per second one disk moves at ``mbps``, within the per-disk cap."""
    return min(mbps * 1e6 / 8, cap_mb_s * 1e6)


def estimate_backup(
    disks: Sequence[DiskLoad],
    *,
    initial: bool,
    measured: Measured | None = None,
    daily_change: float = DEFAULT_DAILY_CHANGE,
    cap_mb_s: float = DISK_CAP_MB_S,
    snapshot_seconds: float | None = None,
    queue_wait_seconds: float = 0.0,
    other_kind: Measured | None = None,
) -> Estimate:
    """Estimate one backup of a VM's non-temporary disks: the slowest disk decides.

    ``measured`` is what this VM's recent backups of the same kind measured (see
    ``measure``). Without it an initial backup reads all data and an incremental one the
    changes (``daily_change`` of the data), at the seed's rates. With it, each disk reads
    what such backups read (for an incremental, a whole disk unless change tracking spared
    the rest) at its own measured rate (the VM's for a disk it has not seen), and an
    incremental expects what they found changed. An explicit ``snapshot_seconds`` wins over
    the measured one; without one of this kind, the snapshot time ``other_kind`` (the VM's
    backups of the other kind) measured: taking a snapshot and committing a point cost the
    same whether the backup is full or not, and a VM's own figure beats the default.
    """
    protected = [d for d in disks if d.role != "temporary"]
    cap = cap_mb_s * 1e6
    table = disk_rate(INITIAL_MBPS if initial else INCREMENTAL_MBPS, cap_mb_s)
    per_disk = []
    changed_total = 0.0
    for d in protected:
        if initial:
            changed = float(d.used_bytes)
        elif measured is not None and d.name in measured.changed:
            changed = measured.changed[d.name]
        else:
            changed = d.used_bytes * daily_change
        changed_total += changed
        if measured is None:
            per_disk.append(DiskEstimate(d.name, changed, table))
            continue
        # What such backups read (zeros in data ranges too), at the rate they read it; a
        # disk they never saw is read in full.
        transfer = measured.reads.get(d.name, float(d.used_bytes))
        rate = min(measured.rates.get(d.name, measured.vm_rate), cap)
        per_disk.append(DiskEstimate(d.name, transfer, rate))
    if initial:
        changed_source = "all data"
    elif measured is not None:
        changed_source = measured.source
    else:
        changed_source = f"daily change {daily_change:.0%}"
    if snapshot_seconds is not None:
        snapshot, snapshot_source = snapshot_seconds, "given"
    elif measured is not None and measured.overhead_seconds is not None:
        snapshot, snapshot_source = measured.overhead_seconds, measured.source
    elif other_kind is not None and other_kind.overhead_seconds is not None:
        other = "incremental" if initial else "initial"
        snapshot = other_kind.overhead_seconds
        snapshot_source = f"{other_kind.source[:-1]}, {other})"
    else:
        snapshot, snapshot_source = DEFAULT_SNAPSHOT_SECONDS, "default"
    return Estimate(
        "initial" if initial else "incremental",
        sum(d.used_bytes for d in protected),
        round(changed_total),
        max((d.seconds for d in per_disk), default=0.0),
        snapshot,
        queue_wait_seconds,
        measured.source if measured is not None else SEED_TABLE,
        changed_source,
        snapshot_source,
        tuple(per_disk),
    )
