"""The disks a use case reads or writes: what to open, how, and within which budgets."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmvault.disks.qemu import check_format, fuse_export
from vmvault.disks.source import RawDisk
from vmvault.engine.backup import DiskInput
from vmvault.engine.budgets import DiskBudget, disk_budget

if TYPE_CHECKING:
    from vmvault.inventory import Disk as VmDisk
    from vmvault.inventory import Inventory


@dataclass(frozen=True)
class DiskSpec:
    """A disk to back up: its name in the VM, where it is, its image format and role."""

    name: str
    path: str
    format: str = "raw"
    role: str = "data"
    origin: str | None = None  # the disk's own path when ``path`` is a snapshot of it
    read_format: str | None = None  # how to read ``path`` if not ``format`` (a QEMU snapshot)
    budget: DiskBudget | None = None  # rate caps and the pool's disks-in-flight slot
    changed: list[tuple[int, int]] | None = None  # change hint from a dirty bitmap
    changes_only: bool = False  # ``path`` holds only the changed ranges


def open_disk(stack: ExitStack, spec: DiskSpec) -> DiskInput:
    """Open a disk for reading; non-raw images are read through a QEMU FUSE export."""
    path = spec.path
    read_format = check_format(spec.read_format or spec.format)
    if read_format != "raw":
        path = stack.enter_context(fuse_export(spec.path, read_format))
    source = stack.enter_context(RawDisk.open(path))
    source.path = spec.origin or spec.path  # the point names the disk, not an export or copy
    budget = spec.budget or DiskBudget()
    return DiskInput(
        spec.name,
        source,
        role=spec.role,
        format=spec.format,
        changed=spec.changed,
        changes_only=spec.changes_only,
        byte_buckets=budget.byte_buckets,
        request_buckets=budget.request_buckets,
        slot=budget.slot,
    )


def inventory_budget(
    inventory: Inventory, disk: VmDisk, rate_limit: float | None = None
) -> DiskBudget:
    """The inventory's limits for one disk: its own cap (``rate_limit`` in bytes/s, if
    given, overrides the inventory's) and its pool's shared budgets."""
    disk_cap = rate_limit / 1e6 if rate_limit else inventory.limits.disk_mb_per_s
    return pool_budget(inventory, disk.pool, disk_cap)


def pool_budget(inventory: Inventory, pool_name: str | None, disk_cap: float) -> DiskBudget:
    """A disk's budget within ``pool_name``'s shared ones (egress, requests, disks in
    flight): backups and restores of the pool take their share of the same buckets."""
    if pool_name is None:
        return disk_budget(disk_cap)
    pool = inventory.pools[pool_name]
    return disk_budget(
        disk_cap,
        pool_name,
        egress_mb_per_s=pool.egress_mb_per_s,
        requests_per_second=pool.requests_per_second,
        disks_in_flight=inventory.disks_in_flight(pool_name),
    )
