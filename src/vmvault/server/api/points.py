"""Recovery points: listed (with the damaged ones apart), shown whole, deleted, verified,
and restored as new VMs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query

from vmvault.app.point_ref import resolve_point
from vmvault.app.points import forget_point
from vmvault.app.vm_restore import check_new_vm_restore, only_disks, restore_source
from vmvault.catalog.drills import latest_drills
from vmvault.catalog.verifications import last_verified_docs
from vmvault.errors import Conflict, UsageError
from vmvault.fleet import point_summary
from vmvault.inventory import Vm, VmState
from vmvault.server.api.schemas import (
    Admin,
    Limit,
    Offset,
    Operator,
    Reader,
    RestoreRequest,
    State,
    page,
)
from vmvault.server.state import ServerState

router = APIRouter()


def points_page(state: ServerState, vm: str | None, offset: int, limit: int) -> dict[str, Any]:
    points = [p for p in state.points() if vm is None or p["vm"] == vm]
    points.reverse()  # newest first
    damaged = [{"id": i, "error": e} for i, e in sorted(state.damaged_points().items())]
    shown = points[offset : offset + limit]
    drills = latest_drills(state.catalog, state.vault_id, [p["id"] for p in shown])
    verified = last_verified_docs(state.catalog, state.vault_id)
    return {
        **page(
            [
                {**point_summary(p, verified.get(p["id"])), "drill": drills.get(p["id"])}
                for p in shown
            ],
            len(points),
            offset,
            limit,
        ),
        "damaged": damaged,  # unreadable point objects: their VM is unknown
    }


@router.get("/points", tags=["points"])
def list_points(
    state: State,
    _: Reader,
    offset: Offset = 0,
    limit: Limit = 50,
    vm: Annotated[str | None, Query(max_length=255)] = None,
) -> dict[str, Any]:
    return points_page(state, vm, offset, limit)


@router.get("/points/{point_id}", tags=["points"])
def get_point(point_id: str, state: State, _: Reader) -> dict[str, Any]:
    """A point (by its id or a unique prefix of it) whole: per disk its size, what was
    read, changed and stored, its checksums' manifest, the consistency level reached with
    its reason, its last verify and its newest restore drill."""
    point = state.point(point_id)
    drill = latest_drills(state.catalog, state.vault_id, [point["id"]]).get(point["id"])
    verified = last_verified_docs(state.catalog, state.vault_id).get(point["id"])
    return {**point_summary(point, verified), "drill": drill, "detail": point}


@router.delete("/points/{point_id}", tags=["points"])
def delete_point(point_id: str, state: State, _: Admin) -> dict[str, Any]:
    if point_id not in state.damaged_points():  # a damaged point can be deleted too
        state.point(point_id)
    return {"deleted": forget_point(state.ctx, point_id)}


@router.post("/points/{point_id}/verify", tags=["points"], status_code=202)
def verify_point(point_id: str, state: State, _: Operator) -> dict[str, Any]:
    """Queue a verify: every chunk of the point read, authenticated and re-hashed."""
    point = state.point(point_id)
    job_id = state.queue.enqueue("verify", point["vm"], {"point": point["id"]}, max_attempts=1)
    return state.queued(job_id)


@router.post("/restores", tags=["points"], status_code=202)
def restore(body: RestoreRequest, state: State, _: Operator) -> dict[str, Any]:
    """Queue the restore of a VM's point: as a new VM (its disks and config) in the server's
    restore directory, the original VM not touched; or, with ``in_place`` and the VM's name
    in ``confirm``, over the disks of the stopped VM (backed up first). As a new VM, the
    VM may be one the inventory does not name whose points the vault has. ``disks`` picks some
    of the point's disks, ``format`` converts a new VM's disks to raw or qcow2."""
    inventory = state.inventory()
    if body.in_place:
        return _restore_in_place(body, state, inventory.vm(body.vm))
    root = state.config.restore_root
    if root is None:
        raise Conflict("the server was started without --restore-root: API restores are off")
    if not body.new_name:
        raise UsageError("name the new VM (new_name), or restore in place")
    # The worker checks the same again when the job runs (the inventory may change).
    # A VM the inventory does not name is restored from its points (``restore_source``).
    vm = restore_source(inventory, state.vault, body.vm)
    point_id = check_new_vm_restore(
        inventory, state.vault, vm, body.point, body.new_name, body.pool
    )
    only_disks(state.vault.get_point(point_id), body.disks)  # names checked before queueing
    # The name was checked against NAME_PATTERN: the folder stays inside the root.
    directory = Path(root).resolve() / body.new_name
    if directory.exists():
        raise Conflict(f"{body.new_name} was restored before: choose another name")
    spec = {
        "point": point_id,
        "new_name": body.new_name,
        "directory": str(directory),
        "root": str(Path(root).resolve()),  # the folder is made inside it when the job runs
        "pool": body.pool,
        "disks": body.disks,
        "format": body.format,
    }
    job_id = state.queue.enqueue("restore", vm, spec, max_attempts=1)
    return state.queued(job_id)


def _restore_in_place(body: RestoreRequest, state: ServerState, vm: Vm) -> dict[str, Any]:
    if body.confirm != vm.name:
        raise UsageError(
            f"a restore in place replaces {vm.name}'s disks: confirm with the VM's name"
        )
    if body.format is not None:
        raise UsageError("a restore in place keeps each disk's format")
    if vm.state != VmState.STOPPED:
        raise Conflict(f"{vm.name} is {vm.state.value}: stop it before restoring in place")
    point_id = resolve_point(state.vault, body.point, vm.name)
    point = state.vault.get_point(point_id)
    if point["vm"] != vm.name:
        raise UsageError(f"point {point_id} is of {point['vm']}, not {vm.name}")
    only_disks(point, body.disks)
    spec = {"point": point_id, "in_place": True, "disks": body.disks}
    job_id = state.queue.enqueue("restore", vm.name, spec, max_attempts=1)
    return state.queued(job_id)
