"""How long will a VM's backup take? The seed's best-case table until history knows better.

Pure functions. Throughput is per disk: the seed gives 160 Mbps for an initial backup and
640 Mbps for an incremental one, and disks of one VM run in parallel, each within the
per-disk cap (60 MB/s, "Target Throughput for Single Blob"). Once a VM has backups, its own
measured throughput replaces the table, and its measured changed bytes the default churn.
Units: Mbps = 10^6 bit/s, MB = 10^6 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

INITIAL_MBPS = 160.0
INCREMENTAL_MBPS = 640.0
DISK_CAP_MB_S = 60.0
DEFAULT_DAILY_CHANGE = 0.05  # Azure sees 2-7 % daily churn on typical VMs
DEFAULT_SNAPSHOT_SECONDS = 60.0


@dataclass(frozen=True)
class DiskLoad:
    """One disk as the planner sees it: the data on it (used, not provisioned)."""

    name: str
    used_bytes: int
    role: str = "data"  # temporary disks are not backed up


@dataclass(frozen=True)
class Estimate:
    kind: str  # "initial" or "incremental"
    read_bytes: int  # the data to read (used bytes of the non-temporary disks)
    changed_bytes: int  # the data to transfer
    transfer_seconds: float  # the slowest disk, disks in parallel
    snapshot_seconds: float
    queue_wait_seconds: float
    rate_source: str  # "seed table" or "measured"

    @property
    def total_seconds(self) -> float:
        return self.queue_wait_seconds + self.snapshot_seconds + self.transfer_seconds


def disk_rate(mbps: float, cap_mb_s: float = DISK_CAP_MB_S) -> float:
    """Bytes per second one disk moves at ``mbps``, within the per-disk cap."""
    return min(mbps * 1e6 / 8, cap_mb_s * 1e6)


def disk_transfers(
    disks: Sequence[DiskLoad],
    *,
    initial: bool,
    measured_mbps: float | None = None,
    measured_changed_bytes: int | None = None,
    daily_change: float = DEFAULT_DAILY_CHANGE,
    cap_mb_s: float = DISK_CAP_MB_S,
) -> tuple[list[tuple[DiskLoad, float]], float]:
    """Bytes each non-temporary disk transfers, and the per-disk rate (bytes/s).

    Changes are spread over the disks in proportion to their data.
    """
    protected = [d for d in disks if d.role != "temporary"]
    used = sum(d.used_bytes for d in protected)
    if initial:
        changed_total: float = used
    elif measured_changed_bytes is not None:
        changed_total = measured_changed_bytes
    else:
        changed_total = used * daily_change
    table = INITIAL_MBPS if initial else INCREMENTAL_MBPS
    rate = disk_rate(measured_mbps if measured_mbps else table, cap_mb_s)
    share = [(d, changed_total * d.used_bytes / used if used else 0.0) for d in protected]
    return share, rate


def estimate_backup(
    disks: Sequence[DiskLoad],
    *,
    initial: bool,
    measured_mbps: float | None = None,
    measured_changed_bytes: int | None = None,
    daily_change: float = DEFAULT_DAILY_CHANGE,
    cap_mb_s: float = DISK_CAP_MB_S,
    snapshot_seconds: float = DEFAULT_SNAPSHOT_SECONDS,
    queue_wait_seconds: float = 0.0,
) -> Estimate:
    """Estimate one backup of a VM's non-temporary disks: the slowest disk decides."""
    share, rate = disk_transfers(
        disks,
        initial=initial,
        measured_mbps=measured_mbps,
        measured_changed_bytes=measured_changed_bytes,
        daily_change=daily_change,
        cap_mb_s=cap_mb_s,
    )
    return Estimate(
        "initial" if initial else "incremental",
        sum(d.used_bytes for d, _ in share),
        round(sum(b for _, b in share)),
        max((b for _, b in share), default=0.0) / rate,
        snapshot_seconds,
        queue_wait_seconds,
        "measured" if measured_mbps else "seed table",
    )
