"""VMs (the fleet, backup now, protection), policies, and the inventory file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from vmvault.app.protection import change_protection
from vmvault.app.reports import protection_states, schedules
from vmvault.app.snapshots import usage_doc
from vmvault.errors import NotFound, UsageError
from vmvault.fleet import fleet
from vmvault.reports.summary import protection
from vmvault.server.api.points import points_page
from vmvault.server.api.schemas import (
    Admin,
    BackupRequest,
    InventoryRequest,
    Limit,
    Offset,
    Operator,
    ProtectionRequest,
    Reader,
    State,
    page,
)
from vmvault.server.state import ServerState

router = APIRouter()


def _fleet(state: ServerState) -> list[dict[str, Any]]:
    """The fleet's rows, each with ``rpo_status``: protected, at risk, never backed up or
    not scheduled, by the same rule as the reports (``reports.summary.protection``)."""
    inventory = state.inventory()
    points = state.points()
    states = protection_states(inventory, state.vault)
    active = state.queue.running() + state.queue.queued()
    rows = fleet(inventory, points, states, active)
    now = datetime.now(UTC)
    rpo = {p.vm: p for p in protection(schedules(inventory, states), points, now)}
    return [{**row, "rpo_status": rpo[row["name"]].status} for row in rows]


@router.get("/vms", tags=["vms"])
def list_vms(state: State, _: Reader, offset: Offset = 0, limit: Limit = 50) -> dict[str, Any]:
    """The fleet: each VM's protection, last backup, consistency and next run."""
    rows = _fleet(state)
    return page(rows[offset : offset + limit], len(rows), offset, limit)


@router.get("/vms/{name}", tags=["vms"])
def get_vm(name: str, state: State, _: Reader) -> dict[str, Any]:
    """One VM's fleet row, with what its instant-restore snapshots hold beside its disks."""
    inventory = state.inventory()
    vm = inventory.vm(name)
    row = next(row for row in _fleet(state) if row["name"] == name)
    return {**row, "instant_restore": usage_doc(inventory, vm)}


@router.get("/vms/{name}/points", tags=["vms"])
def vm_points(
    name: str, state: State, _: Reader, offset: Offset = 0, limit: Limit = 50
) -> dict[str, Any]:
    state.inventory().vm(name)
    return points_page(state, name, offset, limit)


@router.post("/vms/{name}/backup", tags=["vms"], status_code=202)
def backup_vm(
    name: str, state: State, _: Operator, body: BackupRequest | None = None
) -> dict[str, Any]:
    """Queue a backup of the VM now; follow it at /jobs/{id}."""
    vm = state.inventory().vm(name)
    if not vm.protected_disks():
        raise UsageError(f"{name} has no disk to back up (all are temporary)")
    job_id = state.queue.enqueue("backup", name, {"full": bool(body and body.full), "manual": True})
    return state.queued(job_id)


@router.post("/vms/{name}/protection", tags=["vms"])
def vm_protection(name: str, body: ProtectionRequest, state: State, _: Admin) -> dict[str, Any]:

    state.inventory().vm(name)
    return change_protection(state.ctx, name, body.action, delete_data=body.delete_data)


@router.get("/policies", tags=["policies"])
def list_policies(state: State, _: Reader) -> dict[str, Any]:
    policies = [p.model_dump(mode="json") for p in state.inventory().policies.values()]
    return page(policies, len(policies), 0, len(policies) or 1)


@router.get("/policies/{name}", tags=["policies"])
def get_policy(name: str, state: State, _: Reader) -> dict[str, Any]:
    policies = state.inventory().policies
    if name not in policies:
        raise NotFound(f"no policy {name!r}")
    return policies[name].model_dump(mode="json")


@router.get("/inventory", tags=["policies"])
def get_inventory(state: State, _: Admin) -> dict[str, Any]:
    path = state.config.inventory
    return {"path": path, "toml": Path(path).read_text() if path else ""}


@router.put("/inventory", tags=["policies"])
def put_inventory(body: InventoryRequest, state: State, _: Admin) -> dict[str, Any]:
    """Replace the inventory (VMs, pools, policies, alerts): validated, then written atomically."""
    inventory = state.replace_inventory(body.toml)
    return {
        "path": state.config.inventory,
        "vms": len(inventory.vms),
        "policies": sorted(inventory.policies),
    }
