"""The instant-restore snapshots a VM's policy keeps beside its disks: cut before a backup
that copies the disks if the copy would not fit, bounded after each backup by the policy,
the VM's and its pools' caps and the file system's free space (snapshot/instant.py does the
files), and reported (``vm show``, the dashboard, ``plan``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from vmvault.app.context import Context
from vmvault.app.records import raise_alert
from vmvault.inventory import Inventory, Vm
from vmvault.snapshot import instant
from vmvault.vault.vault import Vault

log = logging.getLogger("vmvault")
GiB = 1024**3  # caps are given in GiB


def limits_for(inventory: Inventory, vm: Vm) -> instant.Limits | None:
    """What ``vm``'s store may hold; None if its policy keeps no snapshots."""
    if not vm.policy:
        return None
    policy = inventory.policy(vm.policy)
    days = policy.retention.instant_restore_days
    if not days:
        return None
    schedule = policy.schedule
    needed = instant.snapshots_needed(days, schedule.kind, schedule.every_hours)
    pools = []
    for name in sorted({d.pool for d in vm.disks if d.pool}):
        cap = inventory.pools[name].instant_restore_max_gib if name in inventory.pools else None
        if cap is not None:
            disks = [d.path for other in inventory.vms for d in other.disks if d.pool == name]
            pools.append((name, int(cap * GiB), disks))
    vm_cap = int(vm.instant_restore_max_gib * GiB) if vm.instant_restore_max_gib else None
    return instant.Limits(keep_days=days, max_points=needed, vm_cap=vm_cap, pool_caps=pools)


def make_room_for_copy(ctx: Context, vault: Vault, inventory: Inventory, vm: Vm) -> None:
    """Before ``vm``'s disks are copied: its oldest snapshots go where the copy would not
    fit with 10 % free besides (a warning alert says so; the copy may still fail)."""
    if limits_for(inventory, vm) is None:
        return
    now = datetime.now(UTC)
    done = instant.make_room(vm.name, [d.path for d in vm.protected_disks()], now)
    _report(ctx, vault, vm, done, f"copy:{now:%Y-%m-%d}")


def bound_after_backup(ctx: Context, vault: Vault, inventory: Inventory, vm: Vm) -> dict[str, Any]:
    """Bound ``vm``'s store now; a file system running low raises a warning alert."""
    limits = limits_for(inventory, vm)
    if limits is None:
        return {"removed": [], "warnings": []}
    now = datetime.now(UTC)
    done = instant.bound(vm.name, [d.path for d in vm.disks], limits, now)
    _report(ctx, vault, vm, done, f"kept:{now:%Y-%m-%d}")
    return {"removed": done.removed, "warnings": done.warnings}


def _report(ctx: Context, vault: Vault, vm: Vm, done: instant.Bounded, event: str) -> None:
    """Log what went; each warning is an alert, raised once a day per VM and ``event``."""
    for line in done.removed:
        log.info("instant-restore snapshots removed: %s", line)
    for warning in done.warnings:
        log.warning("%s", warning)
        raise_alert(
            ctx,
            vault,
            "instant_restore_space_low",
            warning,
            vm=vm.name,
            dedupe_key=f"instant_restore_space_low:{vm.name}:{event}",
        )


def usage_doc(inventory: Inventory, vm: Vm) -> dict[str, Any]:
    """What ``vm``'s snapshots hold on disk, what may they (``vm show``, the fleet), and
    why fewer are kept than the policy allows (``why_fewer``, else None)."""
    limits = limits_for(inventory, vm)
    since = datetime.now(UTC) - timedelta(days=limits.keep_days) if limits else None
    used = instant.usage(vm.name, [d.path for d in vm.disks], since)
    why_fewer = None
    if limits and used["points"] < limits.max_points:
        days = f"{limits.keep_days} day{'s' if limits.keep_days != 1 else ''}"
        cut = "; ".join(used["cut_by"])
        why_fewer = f"cut by {cut}" if cut else f"fewer backups in the last {days}"
    return {
        **used,
        "keeps": limits.max_points if limits else 0,
        "cap_bytes": limits.vm_cap if limits else None,
        "why_fewer": why_fewer,
    }


def pool_usage(inventory: Inventory) -> dict[str, dict[str, Any]]:
    """Per pool, what the snapshots of its VMs' disks hold and its cap (``plan``)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, pool in sorted(inventory.pools.items()):
        disks = [d.path for vm in inventory.vms for d in vm.disks if d.pool == name]
        held = sum(k.held for k in instant.kept_snapshots(disks))
        cap = int(pool.instant_restore_max_gib * GiB) if pool.instant_restore_max_gib else None
        rows[name] = {"bytes": held, "cap_bytes": cap}
    return rows
