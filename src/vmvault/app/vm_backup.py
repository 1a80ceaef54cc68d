"""Backing up VMs of the inventory, quiesced and snapshotted the way the seed describes."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Any

from vmvault.app.backup import backup_and_record
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec, inventory_budget
from vmvault.app.records import JobRecorder, recorded_job
from vmvault.app.snapshots import bound_after_backup, make_room_for_copy
from vmvault.consistency import (
    Freezer,
    FsFreezer,
    GuestAgentFreezer,
    NoFreezer,
    load_script_config,
    quiesce,
)
from vmvault.engine.progress import ProgressCallback, no_progress
from vmvault.inventory import Disk as VmDisk
from vmvault.inventory import Inventory, Vm, VmState
from vmvault.model.point import RecoveryPoint
from vmvault.snapshot import instant
from vmvault.snapshot.base import SnapshotProvider
from vmvault.snapshot.select import choose_for_vm, live_snapshot, start_snapshot


def run_vm_backup(
    ctx: Context,
    inventory: Inventory,
    vm_name: str,
    *,
    full: bool = False,
    workers: int | None = None,
    rate_limit: float | None = None,
    progress: ProgressCallback = no_progress,
    recorder: JobRecorder | None = None,
) -> RecoveryPoint:
    """Back up a VM of the inventory the way the seed describes it.

    Pre-script -> file-system freeze -> point-in-time snapshot of every non-temporary disk
    -> thaw -> post-script; then all disks are transferred in parallel from the snapshot,
    which is removed afterwards. The point records the consistency level reached and why,
    the excluded temporary disks, and the VM's configuration.
    """

    vm = inventory.vm(vm_name)
    disks = vm.protected_disks()
    running = vm.state == VmState.RUNNING
    scripts = load_script_config(vm.scripts) if vm.scripts and running else None
    freezer: Freezer = NoFreezer()
    if running and vm.guest_agent:
        freezer = GuestAgentFreezer(vm.guest_agent, vm.freeze)  # inside the guest
    elif running and vm.freeze:
        freezer = FsFreezer(vm.freeze)
    pools = sorted({d.pool for d in disks if d.pool})
    with (
        ctx.session("backup", pools) as vault,
        recorded_job(ctx, vault, "backup", vm.name)
        if recorder is None
        else nullcontext(recorder) as job,
    ):
        provider = choose_for_vm(vault, vm, disks, running, full)
        meta: dict[str, Any] = {"snapshot": provider.name}
        if provider.name == "copy":  # a reflink or an in-place read needs no room
            make_room_for_copy(ctx, vault, inventory, vm)
        try:
            with quiesce(scripts, freezer, vm_running=running, single_disk=len(disks) == 1) as q:
                images = start_snapshot(provider, [d.path for d in disks])
            specs = [
                replace(spec, budget=inventory_budget(inventory, d, rate_limit))
                for spec, d in zip(
                    _snapshot_specs(inventory, vm, provider, images, meta), disks, strict=True
                )
            ]
            point = backup_and_record(
                vault,
                job,
                vm.name,
                specs,
                full=full,
                workers=workers,
                progress=progress,
                consistency=q.consistency.to_dict(),
                excluded=[
                    {
                        "name": d.name,
                        "role": d.role.value,
                        "path": d.path,
                        "reason": "temporary disk: never backed up",
                    }
                    for d in vm.excluded_disks()
                ],
                vm_config=vm.model_dump(mode="json"),
                meta={**meta, "quiesce": q.to_dict()},
            )
            if live := live_snapshot(provider):
                live.commit()  # only now may the parent's dirty bitmap go
            elif provider.name in ("reflink", "copy") and _keeps_snapshots(inventory, vm):
                instant.keep(point, {d.name: d.path for d in disks}, images)
                bound_after_backup(ctx, vault, inventory, vm)
            return point
        finally:
            provider.release()


def _keeps_snapshots(inventory: Inventory, vm: Vm) -> bool:
    """Whether the VM's policy keeps instant-restore snapshots."""
    return bool(vm.policy and inventory.policy(vm.policy).retention.instant_restore_days)


def _disk_spec(inventory: Inventory, vm: Vm, disk: VmDisk, image: str) -> DiskSpec:
    """The spec of an inventory disk read from ``image`` (the disk or its snapshot)."""
    return DiskSpec(
        disk.name,
        image,
        disk.format.value if disk.format else None,
        disk.role.value,
        origin=disk.path,
        force_format=disk.force_format,
        declared_in=f"{inventory.source}: vms[{vm.name!r}].disks[{disk.name!r}]",
    )


def _snapshot_specs(
    inventory: Inventory,
    vm: Vm,
    provider: SnapshotProvider,
    images: list[str],
    meta: dict[str, Any],
) -> list[DiskSpec]:
    disks = vm.protected_disks()
    specs = [_disk_spec(inventory, vm, d, image) for d, image in zip(disks, images, strict=True)]
    live = live_snapshot(provider)
    if live is None:
        return specs
    live.wait()
    meta["qemu_generation"] = live.generation()
    meta["qemu_notes"] = dict(zip([d.name for d in disks], live.notes(), strict=True))
    return [
        replace(spec, read_format=fmt, changed=changed, changes_only=changed is not None)
        for spec, fmt, changed in zip(specs, live.formats(), live.changed(), strict=True)
    ]
