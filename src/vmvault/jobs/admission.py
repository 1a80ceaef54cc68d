"""Admission control from the seed's limits, as pure functions over plain data.

The scheduler asks `admit` before starting a VM's backup, and the capacity planner runs the
same function over a simulated day: one rule set, not two copies.

Defaults are the seed's: each disk read at most 60 MB/s ("Target Throughput for Single
Blob"), at most 20 disks of one storage pool in flight, at most 40 VMs backing up at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmvault.inventory import Inventory


@dataclass(frozen=True)
class Limits:
    disk_mb_per_s: float = 60.0
    max_vms: int = 40
    # per pool: at most this many disks in flight (a pool may lower it)
    max_disks_per_pool: int = 20
    pool_disk_caps: Mapping[str, int] = field(default_factory=dict)

    def disk_cap(self, pool: str) -> int:
        return min(self.max_disks_per_pool, self.pool_disk_caps.get(pool, self.max_disks_per_pool))


@dataclass(frozen=True)
class JobLoad:
    """What one VM backup occupies while it runs: its disks, counted per pool."""

    vm: str
    disks_per_pool: Mapping[str, int]


def pool_load(running: Iterable[JobLoad]) -> Counter[str]:
    total: Counter[str] = Counter()
    for job in running:
        total.update(job.disks_per_pool)
    return total


def admit(running: Iterable[JobLoad], candidate: JobLoad, limits: Limits) -> str | None:
    """None if ``candidate`` may start now, else why it has to wait (one sentence)."""
    running = list(running)
    if any(job.vm == candidate.vm for job in running):
        return f"a backup of {candidate.vm} is already running"
    if len(running) >= limits.max_vms:
        return f"{len(running)} VMs are backing up (at most {limits.max_vms} at once)"
    load = pool_load(running)
    for pool, disks in candidate.disks_per_pool.items():
        cap = limits.disk_cap(pool)
        if load[pool] + disks > cap and load[pool] > 0:
            # A VM with more disks than the cap still runs alone on an idle pool.
            return f"pool {pool} has {load[pool]} disks in flight (at most {cap})"
    return None


# The inventory's side: what the worker and the planner count, from the same inventory.


def limits_of(inventory: Inventory) -> Limits:
    return Limits(
        disk_mb_per_s=inventory.limits.disk_mb_per_s,
        max_vms=inventory.limits.max_vms,
        max_disks_per_pool=inventory.limits.max_disks_per_pool,
        pool_disk_caps={n: p.max_disks_in_flight for n, p in inventory.pools.items()},
    )


def job_load(inventory: Inventory, vm_name: str | None) -> JobLoad:
    """What a VM's backup occupies: its protected disks, counted per pool."""
    counts: dict[str, int] = {}
    if vm_name is not None:
        for disk in inventory.vm(vm_name).protected_disks():
            if disk.pool:
                counts[disk.pool] = counts.get(disk.pool, 0) + 1
    return JobLoad(vm_name or "", counts)
