"""The REST API under /api/v1: every route is one service-layer call behind a role check.

Lists are paged (``offset``, ``limit``; the answer carries ``total``). Errors are
``{"error": {"code", "message"}}`` with the status the error carries (see vmvault.errors).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from vmvault import __version__
from vmvault.app.points import forget_point, resolve_point
from vmvault.errors import Conflict, NotFound, UsageError
from vmvault.fleet import fleet, point_summary
from vmvault.inventory import NEW_VM_NAME_PATTERN
from vmvault.jobs.queue import job_doc
from vmvault.server.accounts import Principal, Role, token_doc
from vmvault.server.auth import require
from vmvault.server.state import ServerState

if TYPE_CHECKING:
    from vmvault.inventory import Inventory

router = APIRouter(prefix="/api/v1")
Reader = Annotated[Principal, Depends(require(Role.reader))]
Operator = Annotated[Principal, Depends(require(Role.operator))]
Admin = Annotated[Principal, Depends(require(Role.admin))]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Items to skip.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
# Row ids: beyond 2**53 no database (nor JavaScript) keeps them exact.
RowId = Annotated[int, PathParam(ge=1, le=2**53)]
NAME_PATTERN = NEW_VM_NAME_PATTERN


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackupRequest(_Body):
    full: bool = Field(False, description="Read every disk in full, ignoring the parent point.")


class RestoreRequest(_Body):
    vm: str = Field(min_length=1, max_length=255, description="The VM whose point to restore.")
    point: str = Field("latest", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.:-]+$")
    new_name: str = Field(
        pattern=NAME_PATTERN, description="Name of the restored VM; its disks go in a folder."
    )
    pool: str | None = Field(None, max_length=255, description="Pool of the restore target.")


class ProtectionRequest(_Body):
    action: Literal["stop", "resume", "undelete"]
    delete_data: bool = False


class VaultSettingsRequest(_Body):
    immutability: Literal["off", "on", "locked"] | None = None
    soft_delete_days: int | None = Field(None, ge=14, le=180)


class TokenRequest(_Body):
    name: str = Field(min_length=1, max_length=255)
    role: Literal["reader", "operator", "admin"]


class InventoryRequest(_Body):
    toml: str = Field(max_length=10_000_000, description="The whole inventory file, as TOML.")


def server(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


State = Annotated[ServerState, Depends(server)]


def page(items: list[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    return {"items": items, "total": total, "offset": offset, "limit": limit}


# -- health and the vault ----------------------------------------------------------------


@router.get("/health", tags=["health"])
def health(state: State) -> dict[str, Any]:
    """Unauthenticated liveness: the server answers and its catalog is reachable."""
    state.queue.running()
    return {"status": "ok", "version": __version__}


@router.get("/vault", tags=["vault"])
def vault_info(state: State, _: Reader) -> dict[str, Any]:
    from vmvault.errors import CorruptObject
    from vmvault.protection import settings

    try:
        doc = settings(state.vault)
    except CorruptObject as exc:  # the rest of the vault still answers; `check` names it
        doc = {"immutability": f"unknown ({exc.message})", "soft_delete_days": None}
    return {
        "vault_id": state.vault_id,
        "location": state.vault.backend.describe(),
        "format_version": state.vault.config.version,
        "immutability": doc["immutability"],
        "soft_delete_days": doc["soft_delete_days"],
        "points": len(state.points()),
        "damaged_points": sorted(state.damaged_points()),
    }


@router.patch("/vault", tags=["vault"])
def vault_settings(body: VaultSettingsRequest, state: State, _: Admin) -> dict[str, Any]:
    from vmvault.app.protection import set_immutability, set_soft_delete

    if body.soft_delete_days is not None:
        set_soft_delete(state.ctx, body.soft_delete_days)
    if body.immutability is not None:
        set_immutability(state.ctx, body.immutability)
    return vault_info(state, _)


# -- VMs, policies, the inventory --------------------------------------------------------


def _fleet(state: ServerState) -> list[dict[str, Any]]:
    from vmvault.errors import CorruptObject
    from vmvault.protection import state_of

    inventory = state.inventory()
    points = state.points()

    def status(vm: str) -> str:
        try:
            return state_of(state.vault, vm).status
        except CorruptObject:
            return "unknown"  # a damaged protection record: `check` names it

    protection = {vm.name: status(vm.name) for vm in inventory.vms}
    active = state.queue.running() + state.queue.queued()
    return fleet(inventory, points, protection, active)


@router.get("/vms", tags=["vms"])
def list_vms(state: State, _: Reader, offset: Offset = 0, limit: Limit = 50) -> dict[str, Any]:
    """The fleet: each VM's protection, last backup, consistency and next run."""
    rows = _fleet(state)
    return page(rows[offset : offset + limit], len(rows), offset, limit)


@router.get("/vms/{name}", tags=["vms"])
def get_vm(name: str, state: State, _: Reader) -> dict[str, Any]:
    state.inventory().vm(name)
    return next(row for row in _fleet(state) if row["name"] == name)


@router.get("/vms/{name}/points", tags=["vms"])
def vm_points(
    name: str, state: State, _: Reader, offset: Offset = 0, limit: Limit = 50
) -> dict[str, Any]:
    state.inventory().vm(name)
    return _points(state, name, offset, limit)


@router.post("/vms/{name}/backup", tags=["vms"], status_code=202)
def backup_vm(
    name: str, state: State, _: Operator, body: BackupRequest | None = None
) -> dict[str, Any]:
    """Queue a backup of the VM now; follow it at /jobs/{id}."""
    vm = state.inventory().vm(name)
    if not vm.protected_disks():
        raise UsageError(f"{name} has no disk to back up (all are temporary)")
    job_id = state.queue.enqueue("backup", name, {"full": bool(body and body.full), "manual": True})
    return job_doc(state.queue.get(job_id))


@router.post("/vms/{name}/protection", tags=["vms"])
def vm_protection(name: str, body: ProtectionRequest, state: State, _: Admin) -> dict[str, Any]:
    from vmvault.app.protection import change_protection

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


# -- jobs --------------------------------------------------------------------------------


@router.get("/jobs", tags=["jobs"])
def list_jobs(
    state: State,
    _: Reader,
    offset: Offset = 0,
    limit: Limit = 50,
    job_state: Annotated[str | None, Query(alias="state", max_length=32)] = None,
    vm: Annotated[str | None, Query(max_length=255)] = None,
) -> dict[str, Any]:
    """Jobs, newest first, with live progress for running ones."""
    from sqlalchemy import func, select

    from vmvault.catalog.models import Job

    where = [Job.vault_id == state.vault_id]
    if job_state:
        where.append(Job.state == job_state)
    if vm:
        where.append(Job.vm == vm)
    with state.catalog.session() as s:
        total = s.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        rows = s.scalars(
            select(Job).where(*where).order_by(Job.id.desc()).offset(offset).limit(limit)
        )
        return page([job_doc(j) for j in rows], total, offset, limit)


@router.get("/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: RowId, state: State, _: Reader) -> dict[str, Any]:
    return job_doc(state.queue.get(job_id))


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(job_id: RowId, state: State, _: Operator) -> dict[str, Any]:
    outcome = state.queue.cancel(job_id)
    return {**job_doc(state.queue.get(job_id)), "outcome": outcome}


# -- recovery points, verify, restore ----------------------------------------------------


def _points(state: ServerState, vm: str | None, offset: int, limit: int) -> dict[str, Any]:
    points = [p for p in state.points() if vm is None or p["vm"] == vm]
    points.reverse()  # newest first
    damaged = [{"id": i, "error": e} for i, e in sorted(state.damaged_points().items())]
    return {
        **page(
            [point_summary(p) for p in points[offset : offset + limit]], len(points), offset, limit
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
    return _points(state, vm, offset, limit)


@router.get("/points/{point_id}", tags=["points"])
def get_point(point_id: str, state: State, _: Reader) -> dict[str, Any]:
    """A point whole: per disk its size, what was read, changed and stored, its checksums'
    manifest, and the consistency level reached with its reason."""
    point = state.point(point_id)
    return {**point_summary(point), "detail": point}


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
    if any(v.name == body.new_name for v in inventory.vms):
        raise Conflict(f"a VM named {body.new_name!r} exists already; choose another name")
    point_id = resolve_point(state.vault, body.point, vm.name)
    if state.point(point_id)["vm"] != vm.name:
        raise UsageError(f"point {point_id} is not a point of {vm.name}")
    if body.pool is not None and body.pool not in inventory.pools:
        raise NotFound(f"no pool {body.pool!r}")
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


# -- planner and cost --------------------------------------------------------------------


class InvalidDay(UsageError):
    """A ``day`` the planner cannot simulate: as FastAPI's own validation errors, 422."""

    code = "invalid_request"
    http_status = 422


# The planner simulates days this close to today: far enough for any schedule, near enough
# that the day's arithmetic (a day after it, timetables, charts) stays within datetime's range.
PLAN_RANGE = timedelta(days=3653)  # ten years


def _plan_day(day: str | None) -> datetime:
    if day is None:
        return datetime.now(UTC) + timedelta(days=1)
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", day):
        raise InvalidDay(f"day: {day!r} is not YYYY-MM-DD")
    try:
        chosen = datetime.fromisoformat(day).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidDay(f"day: {day!r} is not a date") from None
    if abs(chosen.date() - datetime.now(UTC).date()) > PLAN_RANGE:
        raise InvalidDay(f"day: {day} is out of range: choose a day within 10 years of today")
    return chosen


DayQuery = Annotated[
    str | None, Query(max_length=10, description="YYYY-MM-DD (UTC); default tomorrow.")
]


def _budgets(inventory: Inventory) -> dict[str, float]:
    """Each pool's egress budget (MB/s): what the planner's load is measured against."""
    return {name: p.egress_mb_per_s for name, p in inventory.pools.items()}


@router.get("/plan", tags=["planner"])
def plan(state: State, _: Reader, day: DayQuery = None, stagger: bool = False) -> dict[str, Any]:
    """Tomorrow's (or ``day``'s) schedule simulated: starts, ends, pool load against the
    pool's budget (``budget_mb_s``, null for disks without a pool), findings."""
    from vmvault.planning.runner import run_plan

    inventory = state.inventory()
    result = run_plan(state.ctx, inventory, _plan_day(day), stagger=stagger)
    budgets = _budgets(inventory)
    for name, pool in result["pools"].items():
        pool["budget_mb_s"] = budgets.get(name)
    return result


@router.get(
    "/plan/chart.svg",
    tags=["planner"],
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}},
)
def plan_chart(state: State, _: Reader, day: DayQuery = None) -> Response:
    """Each pool's load over the day against its budget, as an SVG chart."""
    import tempfile

    from vmvault.planning.chart import render_load_chart
    from vmvault.planning.runner import run_plan

    inventory = state.inventory()
    result = run_plan(state.ctx, inventory, _plan_day(day))
    with tempfile.TemporaryDirectory() as tmp:
        path = render_load_chart(result, Path(tmp) / "load.svg", _budgets(inventory))
        return Response(path.read_bytes(), media_type="image/svg+xml")


@router.get("/cost", tags=["cost"])
def cost(
    state: State,
    _: Reader,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
) -> dict[str, Any]:
    """This month's bill per VM: protected instances by size tier, and vault storage, with
    the inventory's ``[pricing]`` table."""
    from vmvault.planning.runner import cost_report

    prices = state.inventory().pricing.table()
    return cost_report(state.ctx, currency=currency, prices=prices).to_dict()


# -- alerts, audit, tokens ---------------------------------------------------------------


@router.get("/alerts", tags=["alerts"])
def alerts(state: State, _: Reader, offset: Offset = 0, limit: Limit = 50) -> dict[str, Any]:
    from vmvault.alerts.store import alert_doc, list_alerts

    total, rows = list_alerts(state.catalog, state.vault_id, offset=offset, limit=limit)
    return page([alert_doc(a) for a in rows], total, offset, limit)


@router.get("/audit", tags=["admin"])
def audit(state: State, _: Admin, offset: Offset = 0, limit: Limit = 50) -> dict[str, Any]:
    total, rows = state.accounts.audit_log(offset, limit)
    items = [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "actor": e.actor,
            "role": e.role,
            "action": e.action,
            "target": e.target,
            "status": e.status,
            "remote": e.remote,
        }
        for e in rows
    ]
    return page(items, total, offset, limit)


@router.get("/tokens", tags=["admin"])
def list_tokens(state: State, _: Admin) -> dict[str, Any]:
    rows = [token_doc(t) for t in state.accounts.tokens()]
    return page(rows, len(rows), 0, len(rows) or 1)


@router.post("/tokens", tags=["admin"], status_code=201)
def create_token(body: TokenRequest, state: State, who: Admin) -> dict[str, Any]:
    """A new token; its secret is in this answer only and cannot be shown again."""
    secret, row = state.accounts.create_token(body.name, body.role, created_by=who.name)
    return {**token_doc(row), "token": secret}


@router.delete("/tokens/{token_id}", tags=["admin"])
def revoke_token(token_id: RowId, state: State, who: Admin) -> dict[str, Any]:
    if token_id == who.token_id:
        raise Conflict("a token cannot revoke itself; use another admin token")
    return token_doc(state.accounts.revoke(token_id))
