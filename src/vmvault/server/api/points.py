"""Recovery points: listed (with the damaged ones apart), shown whole, deleted, verified,
and restored as new VMs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query

from vmvault.app.points import forget_point
from vmvault.app.vm_restore import check_new_vm_restore
from vmvault.catalog.verifications import last_verified_docs
from vmvault.errors import Conflict
from vmvault.fleet import point_summary
from vmvault.jobs.queue import job_doc
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
    verified = last_verified_docs(state.catalog, state.vault_id)
    shown = [point_summary(p, verified.get(p["id"])) for p in points[offset : offset + limit]]
    return {
        **page(shown, len(points), offset, limit),
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
    """A point whole: per disk its size, what was read, changed and stored, its checksums'
    manifest, the consistency level reached with its reason, and its last verify."""
    point = state.point(point_id)
    verified = last_verified_docs(state.catalog, state.vault_id).get(point_id)
    return {**point_summary(point, verified), "detail": point}


@router.delete("/points/{point_id}", tags=["points"])
def delete_point(point_id: str, state: State, _: Admin) -> dict[str, Any]:
    if point_id not in state.damaged_points():  # a damaged point can be deleted too
        state.point(point_id)
    return {"deleted": forget_point(state.ctx, point_id)}


@router.post("/points/{point_id}/verify", tags=["points"], status_code=202)
def verify_point(point_id: str, state: State, _: Operator) -> dict[str, Any]:
    """Queue a verify: every chunk of the point read, authenticated and re-hashed."""
    point = state.point(point_id)
    job_id = state.queue.enqueue("verify", point["vm"], {"point": point_id}, max_attempts=1)
    return job_doc(state.queue.get(job_id))


@router.post("/restores", tags=["points"], status_code=202)
def restore(body: RestoreRequest, state: State, _: Operator) -> dict[str, Any]:
    """Queue the restore of a VM's point as a new VM (its disks and config) in the server's
    restore directory; the original VM is not touched."""
    root = state.config.restore_root
    if root is None:
        raise Conflict("the server was started without --restore-root: API restores are off")
    inventory = state.inventory()
    vm = inventory.vm(body.vm)
    # The worker checks the same again when the job runs (the inventory may change).
    point_id = check_new_vm_restore(
        inventory, state.vault, vm, body.point, body.new_name, body.pool
    )
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
    }
    job_id = state.queue.enqueue("restore", vm.name, spec, max_attempts=1)
    return job_doc(state.queue.get(job_id))
