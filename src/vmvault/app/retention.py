"""Retention: each VM's policy applied to its points (``run_prune``), and the daily
maintenance that runs it (``run_maintenance``)."""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from vmvault.app.context import Context
from vmvault.app.protection import purge_soft_deleted
from vmvault.app.records import raise_alert
from vmvault.app.reports import write_monthly
from vmvault.app.snapshots import limits_for
from vmvault.app.vaults import run_gc
from vmvault.backends.base import ObjectRetained
from vmvault.errors import VmvaultError
from vmvault.inventory import Inventory
from vmvault.policy import Point, prune_plan
from vmvault.protection import RetentionShortenedError, accept_retentions, settings, state_of
from vmvault.snapshot import instant
from vmvault.units import human_bytes
from vmvault.vault.replica import note_pruned

log = logging.getLogger("vmvault.scheduler")


def run_prune(
    ctx: Context,
    inventory: Inventory,
    *,
    vm_name: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Apply each VM's retention policy: delete the points it no longer keeps.

    VMs without a policy are left alone. The data of deleted points is freed by the next
    garbage collection.
    """

    now = now or datetime.now(UTC)
    vault = ctx.open_vault(load_index=False)
    immutable = settings(vault)["immutability"]
    points = vault.points()
    policies = {
        vm.name: inventory.policy(vm.policy)
        for vm in ([inventory.vm(vm_name)] if vm_name else inventory.vms)
        if vm.policy is not None  # VMs without a policy are left alone
    }
    try:  # every VM's retention is accepted before anything is deleted
        shortened_by_vm = accept_retentions(vault, inventory, vm_name=vm_name, record=not dry_run)
    except RetentionShortenedError as exc:
        for refused_vm, (policy_name, fields) in [] if dry_run else exc.refused.items():
            raise_alert(
                ctx,
                vault,
                "retention_shortened",
                f"prune refused to keep {refused_vm}'s points for less ({policy_name}): "
                f"{', '.join(fields)}; the vault is immutable ({immutable})",
                vm=refused_vm,
                details={"policy": policy_name, "shortened": fields, "refused": True},
            )
        raise
    result: dict[str, Any] = {"dry_run": dry_run, "vms": {}}
    catalog = ctx.catalog()
    for name, policy in policies.items():
        vm = inventory.vm(name)
        shortened = shortened_by_vm.get(vm.name, [])
        mine = [
            Point(p["id"], datetime.fromisoformat(p["created"]), vm.name)
            for p in points
            if p["vm"] == vm.name
        ]
        # "stop protection, retain data" (and soft-deleted data) is never pruned.
        stopped = state_of(vault, vm.name).status != "protected"
        plan = prune_plan(
            mine,
            policy.retention,
            now,
            policy.schedule.timezone,
            stopped_retain=stopped,
            immutable=immutable,
        )
        deleted, retained = list(plan.prune), []
        if not dry_run:
            for point_id in plan.prune:
                # The catalog's row goes first, without listing the vault again (the store
                # may be failing): a catalog that lags the vault is rebuilt by reindex, but
                # a point vmvault deleted must never look deleted behind its back.
                catalog.forget_points(vault.config.vault_id, [point_id])
                try:
                    vault.delete_point(point_id)
                except ObjectRetained:
                    # The store keeps it for now (a WORM store that refuses deletes): it
                    # stays a point, with its row, and a later prune deletes it.
                    with suppress(VmvaultError):
                        catalog.record_point(vault.config.vault_id, vault.get_point(point_id))
                    deleted.remove(point_id)
                    retained.append(point_id)
                except BaseException:
                    with suppress(VmvaultError):  # still there after all: it keeps its row
                        catalog.record_point(vault.config.vault_id, vault.get_point(point_id))
                    raise
        if shortened and not dry_run:
            raise_alert(
                ctx,
                vault,
                "retention_shortened",
                f"{vm.name}'s points are now kept for less ({policy.name}): {', '.join(shortened)}",
                vm=vm.name,
                details={"policy": policy.name, "shortened": shortened},
            )
        result["vms"][vm.name] = {
            "policy": policy.name,
            "keep": {pid: sorted(reasons) for pid, reasons in sorted(plan.keep.items())},
            "prune": deleted,
            "retained": retained,  # due for deletion, but the store still retains them
            "retention_shortened": shortened,
        }
    if not dry_run:
        # In a copy: what its own retention removed stays removed (see replication).
        note_pruned(
            vault, [pid for vm_result in result["vms"].values() for pid in vm_result["prune"]]
        )
        with suppress(VmvaultError):  # the rows are right already; this only refreshes them
            ctx.catalog().rebuild(vault.config.vault_id, vault.points())
    return result


def run_maintenance(ctx: Context, inventory: Inventory) -> dict[str, Any]:
    """The daily upkeep: purge what soft delete no longer keeps, apply every VM's retention,
    expire instant-restore snapshots, then collect garbage (it defers while backups run).
    Returns what was done (the maintenance job's details)."""
    purged = purge_soft_deleted(ctx)
    # Prune first: it is where an immutable vault refuses a shorter retention, and
    # instant_restore_days is part of it, so nothing may expire before it agreed.
    pruned = run_prune(ctx, inventory)
    now = datetime.now(UTC)
    for vm in inventory.vms:
        if vm.policy:
            days = inventory.policy(vm.policy).retention.instant_restore_days or 0
            instant.expire([d.path for d in vm.disks], days, now)
            if (limits := limits_for(inventory, vm)) is not None:  # caps may have changed
                instant.bound(vm.name, [d.path for d in vm.disks], limits, now)
    report = run_gc(ctx)
    written = monthly_files(ctx, inventory, now)
    deleted = sum(len(v["prune"]) for v in pruned["vms"].values())
    log.info(
        "retention deleted %d point(s); gc freed %s%s",
        deleted,
        human_bytes(report.bytes_freed),
        f" ({report.deferred})" if report.deferred else "",
    )
    done: dict[str, Any] = {"purged": purged, "pruned": deleted, "gc": report.to_dict()}
    return done | ({"reports": written} if written else {})


def monthly_files(ctx: Context, inventory: Inventory, now: datetime) -> list[str]:
    """Last month's report into ``[reports] monthly_dir``, if it is set and not there yet.
    A failure is logged, not raised: the report is written at the next maintenance."""
    directory = inventory.reports.monthly_dir
    if directory is None:
        return []
    vault = ctx.open_vault(load_index=False)
    try:
        return write_monthly(
            directory, inventory, vault.points(), ctx.catalog(), vault.config.vault_id, now
        )
    except (OSError, VmvaultError) as exc:
        log.warning("the monthly report was not written to %s: %s", directory, exc)
        return []
