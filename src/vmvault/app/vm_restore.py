"""Restoring a whole VM: every disk of a point with its configuration, in place or as a
new VM beside the old one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

from vmvault.app.context import Context, pools_being_backed_up
from vmvault.app.disks import inventory_budget, pool_budget
from vmvault.app.point_ref import resolve_point
from vmvault.app.records import JobRecorder, recorded_job
from vmvault.app.restore import run_restore
from vmvault.app.vm_backup import run_vm_backup
from vmvault.engine.progress import ProgressCallback, no_progress
from vmvault.engine.targets import (
    TargetExists,
    new_files_folder,
    restore_target,
    target_failure,
)
from vmvault.errors import Conflict, NotFound, UsageError
from vmvault.inventory import Inventory, Vm, VmState, check_new_vm_name
from vmvault.inventory.write import vm_entry
from vmvault.model.point import RecoveryPoint
from vmvault.protection import has_state, settings
from vmvault.vault.vault import Vault

_EXTENSIONS = {"raw": "img", "qcow2": "qcow2", "vpc": "vhd", "vhdx": "vhdx"}


def run_vm_restore(
    ctx: Context,
    inventory: Inventory,
    vm_name: str,
    *,
    point_ref: str = "latest",
    new_name: str | None = None,
    directory: str | None = None,
    target_pool: str | None = None,
    in_place: bool = False,
    confirmed: bool = False,
    force: bool = False,
    confine_to: str | None = None,
    disks: Sequence[str] | None = None,
    disk_format: str | None = None,
    progress: ProgressCallback = no_progress,
    recorder: JobRecorder | None = None,
) -> dict[str, Any]:
    """Restore every disk of a VM's recovery point, with its configuration: one job.

    ``force`` replaces files of the same names; ``confine_to`` (the server's restore
    root) makes ``directory`` a new folder directly inside it, made at write time.

    As a new VM (``new_name`` in ``directory``): disks in their original formats under new
    names, and an inventory entry for the new VM written beside them; the VM may be one
    the inventory does not name, if the vault has its points (``restore_source``). In
    place: only for a stopped VM and when ``confirmed``; the current disks are backed up
    first (as Azure snapshots them before replacing), then each disk is restored to a
    temporary file and renamed over the original, so a failed restore leaves the original
    disk as it was (a disk on a block device, or a symlink to one such as /dev/vg/lv, is
    written in place).
    """
    vault = ctx.open_vault(load_index=False)
    vm = inventory.vm(vm_name) if in_place else restore_source(inventory, vault, vm_name)
    # A request refused as it stands (a name taken, a running VM, no such point) is refused
    # before a job is recorded: nothing ran, so the history is left alone. A queued job's
    # row exists already (the API checked the same before queueing): it fails with them.
    point = checked_request(
        inventory,
        vault,
        vm,
        point_ref=point_ref,
        new_name=new_name,
        directory=directory,
        target_pool=target_pool,
        in_place=in_place,
        confirmed=confirmed,
        disks=disks,
        disk_format=disk_format,
        force=force,
        confine_to=confine_to,
    )
    with (
        recorded_job(ctx, vault, "restore", vm_name)
        if recorder is None
        else nullcontext(recorder) as job
    ):
        result = _vm_restore(
            ctx,
            inventory,
            vault,
            vm,
            point,
            new_name=new_name,
            directory=directory,
            target_pool=target_pool,
            in_place=in_place,
            force=force,
            confine_to=confine_to,
            disk_format=disk_format,
            progress=progress,
        )
        job.finish(
            vault,
            vm_name,
            "succeeded",
            point_id=result["point"],
            counters={
                # read: from the vault, what the restore verified (as its summary says)
                "bytes_read": sum(d["bytes_verified"] for d in result["disks"]),
                "bytes_written": sum(d["bytes_written"] for d in result["disks"]),
            },
            details=result,
        )
    return result


def checked_request(
    inventory: Inventory,
    vault: Vault,
    vm: Vm | str,
    *,
    point_ref: str,
    new_name: str | None,
    directory: str | None,
    target_pool: str | None,
    in_place: bool,
    confirmed: bool,
    disks: Sequence[str] | None,
    disk_format: str | None,
    force: bool = False,
    confine_to: str | None = None,
) -> RecoveryPoint:
    """What a VM restore needs before anything of it runs: its options, a stopped VM and
    a confirmation in place, a free new name and a known pool as a new VM (see
    ``check_new_vm_restore``), a point of the VM with the ``disks`` named, and unless
    ``force`` none of the files a new VM would get in ``directory`` there already. Returns
    the point with only those disks."""
    if disk_format not in (None, "raw", "qcow2"):
        raise UsageError(f"a restored disk is raw or qcow2, not {disk_format!r}")
    if in_place and disk_format is not None:
        raise UsageError("a restore in place keeps each disk's format")
    name = vm if isinstance(vm, str) else vm.name
    if in_place:
        assert isinstance(vm, Vm)  # run_vm_restore takes it from the inventory
        if vm.state != VmState.STOPPED:
            raise UsageError(f"{vm.name} is {vm.state.value}: stop it before restoring in place")
        if not confirmed:
            raise UsageError(f"restoring {vm.name} in place replaces its disks: add --yes")
        point_id = _point_of(vault, name, point_ref)
    elif not new_name or not directory:
        raise UsageError("give --as NEW_NAME and --to DIR, or --in-place")
    else:
        point_id = check_new_vm_restore(inventory, vault, name, point_ref, new_name, target_pool)
    point = only_disks(vault.get_point(point_id), disks)
    if new_name and directory and not in_place and not force and confine_to is None:
        # Found now, not after hours of restoring disks that would then be thrown away. The
        # write-time checks stay (through the folder's descriptor: a file may appear
        # meanwhile). In the server's restore root the folder itself is new: one that
        # exists is refused when it is made (``new_files_folder``).
        folder = Path(directory).absolute()
        names = [_disk_file(new_name, d, disk_format) for d in point["disks"]]
        for file_name in [*names, f"{new_name}.toml"]:
            if os.path.lexists(folder / file_name):
                raise TargetExists(f"{folder / file_name} exists: give --force to replace it")
    return point


def _disk_file(new_name: str, disk: Mapping[str, Any], disk_format: str | None) -> str:
    """The file name of ``disk`` restored for VM ``new_name`` (in ``disk_format``, else its
    own), e.g. ``copy-os.img``."""
    fmt = disk_format or disk.get("format", "raw")
    return f"{new_name}-{disk['name']}.{_EXTENSIONS.get(fmt, 'img')}"


def _vm_restore(
    ctx: Context,
    inventory: Inventory,
    vault: Vault,
    vm: Vm | str,
    point: RecoveryPoint,
    *,
    new_name: str | None,
    directory: str | None,
    target_pool: str | None,
    in_place: bool,
    force: bool,
    confine_to: str | None,
    disk_format: str | None,
    progress: ProgressCallback,
) -> dict[str, Any]:
    name = vm if isinstance(vm, str) else vm.name
    result: dict[str, Any] = {"point": point["id"], "vm": name, "disks": [], "warnings": []}
    targets = [target_pool or ""]
    if in_place and isinstance(vm, Vm):
        targets = sorted({d.pool for d in vm.disks if d.pool})
    for pool in pools_being_backed_up(vault, [p for p in targets if p]):
        # The seed's best practice: a restore onto a pool that is being backed up takes
        # its IOPS from the backup (and the backup's from the restore).
        result["warnings"].append(
            f"pool {pool} is being backed up right now: the restore and the backup will "
            "slow each other down; restore to another pool or later"
        )
    if in_place:
        assert isinstance(vm, Vm)
        return _restore_in_place(ctx, inventory, vm, point, result, progress)
    assert new_name is not None and directory is not None
    return _restore_as_new_vm(
        ctx,
        inventory,
        name,
        point,
        result,
        new_name,
        directory,
        target_pool,
        force,
        confine_to,
        disk_format,
        progress,
    )


def only_disks(point: RecoveryPoint, disks: Sequence[str] | None) -> RecoveryPoint:
    """The point with only ``disks`` (all of them for None); a name it lacks is an error."""
    if disks is None:
        return point
    names = [d["name"] for d in point["disks"]]
    unknown = [d for d in disks if d not in names]
    if unknown or not disks:
        raise UsageError(
            f"point {point['id']} has no disk {unknown[0]!r} (its disks: {', '.join(names)})"
            if unknown
            else "choose at least one disk to restore"
        )
    return cast(
        RecoveryPoint, {**point, "disks": [d for d in point["disks"] if d["name"] in disks]}
    )


def restore_source(inventory: Inventory, vault: Vault, name: str) -> str:
    """``name`` if a restore as a new VM can read its points: a VM of the inventory, or one
    the vault has points of that the inventory does not name (backed up from the command
    line, or removed since): a new VM needs only the point, not the old VM's disks. Any
    other name is the inventory's 'no VM named' error."""
    if any(v.name == name for v in inventory.vms) or any(p["vm"] == name for p in vault.points()):
        return name
    inventory.vm(name)  # raises its error, naming the VMs it knows
    return name


def check_new_vm_restore(
    inventory: Inventory,
    vault: Vault,
    vm: str,
    point_ref: str,
    new_name: str,
    pool: str | None,
) -> str:
    """What a restore as a new VM needs, checked before it is queued (the API) and again
    when it runs: a valid new name that neither a VM of the inventory nor a VM the vault
    still keeps anything of has, a point of ``vm``, a known pool. Returns the point's id."""
    check_new_vm_name(new_name)
    if any(v.name == new_name for v in inventory.vms):
        raise Conflict(f"a VM named {new_name!r} exists already; choose another name")
    point_id = _point_of(vault, vm, point_ref)
    if _kept_by_vault(vault, new_name):
        # Points, protection and retention are the vault's by VM name: a new VM of this
        # name would take over the old one's history (its latest point, a soft delete's
        # purge, an immutable vault's retention).
        raise Conflict(
            f"a VM named {new_name!r} exists in the vault (its recovery points or "
            f"settings), though not in {inventory.source}; choose another name"
        )
    if pool is not None and pool not in inventory.pools:
        raise NotFound(f"no pool named {pool!r} in {inventory.source}")
    return point_id


def _kept_by_vault(vault: Vault, name: str) -> bool:
    """Whether the vault keeps anything under VM ``name``: a protection state, a retention
    record, or a readable point (read last: every point is one object to read)."""
    if has_state(vault, name) or name in settings(vault).get("retention_by_vm", {}):
        return True
    return any(p["vm"] == name for p in vault.points())


def _point_of(vault: Vault, vm: str, point_ref: str) -> str:
    point_id = resolve_point(vault, point_ref, vm)
    owner = vault.get_point(point_id)["vm"]
    if owner != vm:
        raise UsageError(f"point {point_id} belongs to {owner}, not {vm}")
    return point_id


def _restore_in_place(
    ctx: Context,
    inventory: Inventory,
    vm: Vm,
    point: RecoveryPoint,
    result: dict[str, Any],
    progress: ProgressCallback,
) -> dict[str, Any]:
    point_id = point["id"]
    safety = run_vm_backup(ctx, inventory, vm.name, progress=progress)
    result["safety_point"] = safety["id"]
    paths = {d.name: Path(d.path) for d in vm.disks}
    vm_disks = {d.name: d for d in vm.disks}
    for disk in point["disks"]:
        final = paths.get(disk["name"])
        if final is None:
            raise UsageError(f"{vm.name} has no disk {disk['name']!r} any more")
        # A file disk is restored under a temporary name and renamed over the original
        # only when whole (``restore_target`` with force); a device is written in place
        # (a temporary file beside /dev/vg/lv would replace the link, not the volume).
        report = run_restore(
            ctx,
            point_id,
            str(final),
            disk=disk["name"],
            target_format=disk.get("format", "raw"),
            sync=True,
            force=True,
            budget=inventory_budget(inventory, vm_disks[disk["name"]]),
            progress=progress,
            record=False,
        )
        result["disks"].append(
            {
                "name": disk["name"],
                "path": str(final),
                "bytes_verified": report.bytes_verified,
                "bytes_written": report.bytes_written,
            }
        )
    return result


def _restore_as_new_vm(
    ctx: Context,
    inventory: Inventory,
    vm: str,
    point: RecoveryPoint,
    result: dict[str, Any],
    new_name: str,
    directory: str,
    target_pool: str | None,
    force: bool,
    confine_to: str | None,
    disk_format: str | None,
    progress: ProgressCallback,
) -> dict[str, Any]:
    point_id = point["id"]
    target_dir = Path(directory).absolute()
    budget = None
    if target_pool:
        budget = pool_budget(inventory, target_pool, inventory.limits.disk_mb_per_s)
    config = dict(point.get("vm_config") or {"name": vm, "disks": []})
    new_disks = []
    confined = Path(confine_to) if confine_to else None
    created: list[Path] = []  # files this restore added, removed again if it fails
    with new_files_folder(target_dir, confine_to=confined) as folder:
        try:
            for disk in point["disks"]:
                fmt = disk_format or disk.get("format", "raw")
                name = _disk_file(new_name, disk, disk_format)
                path = target_dir / name
                existed = os.path.lexists(folder / name)
                report = run_restore(
                    ctx,
                    point_id,
                    str(folder / name),  # through the folder's descriptor
                    disk=disk["name"],
                    target_format=fmt,
                    force=force,
                    new_file=True,
                    budget=budget,
                    progress=progress,
                    record=False,
                )
                if not existed:
                    created.append(folder / name)
                result["disks"].append(
                    {
                        "name": disk["name"],
                        "path": str(path),
                        "format": fmt,
                        "bytes_verified": report.bytes_verified,
                        "bytes_written": report.bytes_written,
                    }
                )
                old: dict[str, Any] = next(
                    (d for d in config.get("disks", []) if d.get("name") == disk["name"]), {}
                )
                new_disks.append(
                    {
                        **old,
                        "name": disk["name"],
                        "path": str(path),
                        "format": fmt,
                        "role": disk.get("role", old.get("role", "data")),
                    }
                )
            entry = {**config, "name": new_name, "state": "stopped", "disks": new_disks}
            toml = folder / f"{new_name}.toml"
            try:
                with restore_target(toml, force=force, new_file=True) as prepared:
                    Path(prepared.path).write_text("\n".join(vm_entry(entry)) + "\n")
            except OSError as exc:
                raise target_failure(target_dir / toml.name, exc) from None
        except BaseException:
            # Half a VM is of no use and would stand in the way of the next attempt: the
            # files this restore added go (those --force replaced are whole and stay).
            for added in created:
                with contextlib.suppress(OSError):  # gone already: nothing more to do
                    os.unlink(added)
            raise
    result.update(new_vm=new_name, inventory=str(target_dir / f"{new_name}.toml"))
    return result
