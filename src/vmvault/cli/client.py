"""One client for the commands that work on a local vault and on a server (``--server``).

A command parses its options, makes one call on the ``Client`` that ``get_client`` chooses,
and renders the answer. ``LocalClient`` runs the use cases of ``vmvault.app`` (and the
planner, the job queue, the alert store) on the vault named by ``--vault``; ``RemoteClient``
sends the requests the dashboard sends to /api/v1. Both answer with the same documents
where the server has them; where it answers otherwise, the answer says so by its type
(``Job``: the server ran a job; ``Fleet``: the server's view of the VMs).

Commands that only work locally do not come here: ``options.context`` refuses ``--server``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from vmvault.app.context import Context
from vmvault.app.points import list_points
from vmvault.app.restore import run_verify
from vmvault.app.snapshots import pool_usage, usage_doc
from vmvault.app.vm_backup import run_vm_backup
from vmvault.app.vm_restore import run_vm_restore
from vmvault.cli.options import context, rate_limit_bytes, remote
from vmvault.cli.output import progress_bar
from vmvault.cluster.settings import BROKER_ENV
from vmvault.errors import COST_MODEL_OFF, CostModelOff, UsageError
from vmvault.fleet import point_summary
from vmvault.inventory import Inventory, Vm, load_inventory
from vmvault.planning.chart import render_load_chart

if TYPE_CHECKING:
    from vmvault.cli.remote import Remote
    from vmvault.jobs.queue import JobQueue
    from vmvault.model.point import RecoveryPoint

JsonDoc = dict[str, Any]

# The answers are NamedTuples and the clients plain classes, not dataclasses: every start
# of the CLI imports this module, and making a dataclass (exec of its methods) is slow.


class PointList(NamedTuple):
    """Recovery points oldest first: ``points`` as ``--json`` prints them (whole points
    locally, the server's summaries), ``summaries`` for the table, and the damaged ones;
    ``known_ids``, the ids a shown prefix must tell apart (the vault's, or the server's
    answer's)."""

    points: Sequence[Mapping[str, Any]]  # whole points (typed dicts) or the server's JSON
    summaries: list[JsonDoc]
    damaged: list[JsonDoc]
    known_ids: list[str]


class Job(NamedTuple):
    """The server's job that ran (or, not followed, will run) a run command."""

    doc: JsonDoc

    @property
    def failed(self) -> bool:
        return self.doc["state"] in ("failed", "cancelled")


class Fleet(NamedTuple):
    """VMs as the server sees them: protection, last backup, next run (rows of /api/v1/vms)."""

    rows: list[JsonDoc]


class VmShown(NamedTuple):
    """A VM of the inventory, and its newest recovery point when the vault was read:
    ``newest`` is None for a VM never backed up; nobody looked without a vault."""

    vm: Vm
    vault_read: bool
    newest: RecoveryPoint | None
    instant: dict[str, Any] | None = None  # its instant-restore snapshots (snapshots.usage_doc)


class VmRestore(NamedTuple):
    """How `vm restore` restores a VM: which point, as what, where."""

    point: str
    new_name: str | None
    directory: str | None
    pool: str | None
    in_place: bool
    confirmed: bool
    force: bool


class Client(Protocol):
    """What a command can ask, wherever it runs; each answer is ready to render."""

    def list_points(self, vm: str | None) -> PointList: ...

    def verify(self, point: str, vm: str | None) -> tuple[str, list[JsonDoc]]:
        """The point's full id and a verify report per disk."""
        ...

    def plan(
        self,
        when: datetime,
        *,
        stagger: bool,
        apply: bool,
        chart: str | None,
        inventory: str | None,
    ) -> JsonDoc: ...

    def cost(self, currency: str | None, inventory: str | None) -> JsonDoc: ...

    def list_vms(self, inventory: str | None) -> Inventory | Fleet: ...

    def show_vm(self, name: str, inventory: str | None) -> VmShown | Fleet: ...

    def vm_backup(
        self,
        name: str,
        inventory: str | None,
        *,
        full: bool,
        limit_rate: float | None,
        wait: bool,
    ) -> RecoveryPoint | Job:
        """The new point, or the server's job."""
        ...

    def vm_restore(self, name: str, inventory: str | None, request: VmRestore) -> JsonDoc | Job:
        """What was restored where, or the server's job."""
        ...

    def list_jobs(self, limit: int, state: str | None, vm: str | None) -> list[JsonDoc]:
        """The newest jobs (in ``state``, of ``vm``, when given), newest first."""
        ...

    def show_job(self, job_id: int) -> JsonDoc: ...

    def cancel_job(self, job_id: int) -> str:
        """What became of the job (cancelled, cancelling...)."""
        ...

    def run_now(self, vm: str, full: bool, inventory: str | None) -> int:
        """The id of the queued backup job."""
        ...

    def list_alerts(self, limit: int) -> list[JsonDoc]: ...


def get_client(
    vault: str | None = None,
    catalog: str | None = None,
    passphrase_file: str | None = None,
    *,
    progress: bool = False,
) -> Client:
    """The server's client with ``--server``, else the local vault's (opened on first use).

    ``progress``: show progress bars of long runs on a terminal (not with ``--json``)."""
    if (server := remote()) is not None:
        return RemoteClient(server, progress)
    return LocalClient(vault, catalog, passphrase_file, progress)


class LocalClient:
    """The vault named by ``--vault`` (opened by each call that needs it)."""

    def __init__(
        self,
        vault: str | None,
        catalog: str | None,
        passphrase_file: str | None,
        progress: bool = False,
    ) -> None:
        self.vault = vault
        self.catalog = catalog
        self.passphrase_file = passphrase_file
        self.progress = progress

    def _context(self) -> Context:
        return context(self.vault, self.catalog, self.passphrase_file)

    def _queue(self) -> JobQueue:
        # SQLAlchemy takes as long to import as the rest of the CLI: job commands alone.
        from vmvault.jobs.queue import JobQueue

        ctx = self._context()
        return JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)

    def list_points(self, vm: str | None) -> PointList:
        listing = list_points(self._context(), vm)
        points = listing.points
        verified = [listing.verified.get(p["id"]) for p in points]
        return PointList(
            [{**p, "last_verified": v} for p, v in zip(points, verified, strict=True)],
            [point_summary(p, v) for p, v in zip(points, verified, strict=True)],
            listing.damaged_docs(),
            listing.all_ids,
        )

    def verify(self, point: str, vm: str | None) -> tuple[str, list[JsonDoc]]:
        ctx = self._context()
        with progress_bar(self.progress) as progress:
            point_id, reports = run_verify(ctx, point, vm=vm, progress=progress)
        from vmvault.catalog.verifications import verified_vm  # SQLAlchemy: verify alone

        # the reports leave their point and VM to the caller: the verify recorded them
        named = {"point": point_id, "vm": verified_vm(ctx.catalog(), point_id)}
        return point_id, [{**r.to_dict(), **named} for r in reports]

    def plan(
        self,
        when: datetime,
        *,
        stagger: bool,
        apply: bool,
        chart: str | None,
        inventory: str | None,
    ) -> JsonDoc:
        # The planner is not needed at start-up: `plan` and `cost` load it.
        from vmvault.planning.runner import apply_stagger, run_plan

        ctx = self._context() if self.vault else None
        inv = load_inventory(inventory)
        result = run_plan(ctx, inv, when, stagger=stagger)
        result["instant_restore"] = pool_usage(inv)
        if apply:
            apply_stagger(inv, result)
        if chart:
            budgets = {name: p.egress_mb_per_s for name, p in inv.pools.items()}
            result["chart"] = str(render_load_chart(result, chart, budgets))
        return result

    def cost(self, currency: str | None, inventory: str | None) -> JsonDoc:
        from vmvault.planning.runner import cost_report  # as in plan: loads when asked

        prices = None
        if inventory:
            pricing = load_inventory(inventory).pricing
            if not pricing.enabled:
                raise CostModelOff(COST_MODEL_OFF)
            prices = pricing.table()
        ctx = self._context()
        return cost_report(ctx, currency=currency, prices=prices).to_dict()

    def list_vms(self, inventory: str | None) -> Inventory:
        return load_inventory(inventory)

    def show_vm(self, name: str, inventory: str | None) -> VmShown:
        inv = load_inventory(inventory)
        vm = inv.vm(name)
        instant = usage_doc(inv, vm)
        if not self.vault:
            return VmShown(vm, vault_read=False, newest=None, instant=instant)
        points = list_points(self._context(), vm.name).points  # oldest first
        return VmShown(vm, True, points[-1] if points else None, instant)

    def vm_backup(
        self,
        name: str,
        inventory: str | None,
        *,
        full: bool,
        limit_rate: float | None,
        wait: bool,
    ) -> RecoveryPoint:
        inv = load_inventory(inventory)
        ctx = self._context()
        with progress_bar(self.progress) as progress:
            point = run_vm_backup(
                ctx,
                inv,
                name,
                full=full,
                rate_limit=rate_limit_bytes(limit_rate),
                progress=progress,
            )
        # Loaded here: QEMU's and nbdkit's launchers only for a VM that asks for a drill.
        from vmvault.recovery.drill import drill_settings, run_drill

        if drill := drill_settings(inv, name):
            # Beside the point's own fields, as the store's request counts are.
            return {**point, "drill": run_drill(ctx, name, point["id"], *drill)}  # type: ignore[typeddict-unknown-key]
        return point

    def vm_restore(self, name: str, inventory: str | None, request: VmRestore) -> JsonDoc:
        inv = load_inventory(inventory)
        ctx = self._context()
        with progress_bar(self.progress) as progress:
            return run_vm_restore(
                ctx,
                inv,
                name,
                point_ref=request.point,
                new_name=request.new_name,
                directory=request.directory,
                target_pool=request.pool,
                in_place=request.in_place,
                confirmed=request.confirmed,
                force=request.force,
                progress=progress,
            )

    def list_jobs(self, limit: int, state: str | None, vm: str | None) -> list[JsonDoc]:
        from vmvault.jobs.queue import job_doc  # SQLAlchemy, as in _queue

        queue = self._queue()
        _, rows = queue.catalog.job_page(queue.vault_id, state=state, vm=vm, limit=limit)
        return [job_doc(j) for j in rows]

    def show_job(self, job_id: int) -> JsonDoc:
        from vmvault.jobs.queue import job_doc  # SQLAlchemy, as in _queue

        return job_doc(self._queue().get(job_id))

    def cancel_job(self, job_id: int) -> str:
        return str(self._queue().cancel(job_id))

    def run_now(self, vm: str, full: bool, inventory: str | None) -> int:
        found = load_inventory(inventory)
        found.vm(vm)  # refuse unknown VMs now, not in the worker
        queue = self._queue()
        broker = os.environ.get(BROKER_ENV)
        if broker:  # a fleet: the job is sent to its host's worker (Celery: only then)
            from vmvault.cluster.broker import Dispatcher, make_app
            from vmvault.cluster.settings import FleetSettings

            app = make_app(FleetSettings.from_env(broker))
            queue.dispatch = Dispatcher(app, lambda: found)
        return int(queue.enqueue("backup", vm, {"full": full}))

    def list_alerts(self, limit: int) -> list[JsonDoc]:
        # The alert store is SQLAlchemy's (slow to import): loaded by `alerts list` alone.
        from vmvault.alerts.store import alert_doc
        from vmvault.alerts.store import list_alerts as stored

        ctx = self._context()
        vault_id = ctx.open_vault(load_index=False).config.vault_id
        _, rows = stored(ctx.catalog(), vault_id, limit=limit)
        return [alert_doc(a) for a in rows]


class RemoteClient:
    """The server of ``--server``: the requests the dashboard sends."""

    def __init__(self, server: Remote, progress: bool = False) -> None:
        self.server = server
        self.progress = progress

    def list_points(self, vm: str | None) -> PointList:
        page = self.server.get("/api/v1/points", vm=vm, limit=500)
        points = page["items"]
        points.reverse()  # oldest first, as locally
        damaged = page.get("damaged", [])
        return PointList(points, points, damaged, [p["id"] for p in points + damaged])

    def verify(self, point: str, vm: str | None) -> tuple[str, list[JsonDoc]]:
        from vmvault.cli.remote import RemoteError  # httpx: kept off the start-up path

        point_id = self.server.point_id(point, vm)
        job = self.server.wait(self.server.post(f"/api/v1/points/{point_id}/verify")["id"])
        if job["state"] != "succeeded" and not job["details"].get("disks"):
            raise RemoteError(str(job["error_code"]), f"server: {job['error_message']}")
        named = {"point": point_id, "vm": job["vm"] or ""}
        return point_id, [{**disk, **named} for disk in job["details"]["disks"]]

    def plan(
        self,
        when: datetime,
        *,
        stagger: bool,
        apply: bool,
        chart: str | None,
        inventory: str | None,
    ) -> JsonDoc:
        if apply:
            raise UsageError("--apply writes the inventory: run it where the inventory is")
        day_text = when.date().isoformat()
        result: JsonDoc = self.server.get("/api/v1/plan", day=day_text, stagger=stagger)
        if chart:
            if not chart.endswith(".svg"):
                raise UsageError("with --server the chart comes as SVG: name it *.svg")
            svg = self.server.request_bytes("GET", "/api/v1/plan/chart.svg", day=day_text)
            Path(chart).write_bytes(svg)
            result["chart"] = chart
        return result

    def cost(self, currency: str | None, inventory: str | None) -> JsonDoc:
        return dict(self.server.get("/api/v1/cost", currency=currency))

    def list_vms(self, inventory: str | None) -> Fleet:
        return Fleet(self.server.get("/api/v1/vms", limit=500)["items"])

    def show_vm(self, name: str, inventory: str | None) -> Fleet:
        return Fleet([self.server.get(f"/api/v1/vms/{name}")])

    def vm_backup(
        self,
        name: str,
        inventory: str | None,
        *,
        full: bool,
        limit_rate: float | None,
        wait: bool,
    ) -> Job:
        return self._run(f"/api/v1/vms/{name}/backup", {"full": full}, wait)

    def vm_restore(self, name: str, inventory: str | None, request: VmRestore) -> Job:
        if request.in_place or request.directory or not request.new_name:
            raise UsageError("with --server, restore as a new VM: --as NAME (no --to, --in-place)")
        body = {
            "vm": name,
            "point": request.point,
            "new_name": request.new_name,
            "pool": request.pool,
        }
        return self._run("/api/v1/restores", body, True)

    def _run(self, path: str, body: JsonDoc, wait: bool) -> Job:
        """Queue a job on the server; with ``wait``, follow it to its end."""
        job = self.server.post(path, body)
        if wait:
            with progress_bar(self.progress) as progress:  # the server's per-disk progress, live
                job = self.server.wait(job["id"], progress)
        return Job(job)

    def list_jobs(self, limit: int, state: str | None, vm: str | None) -> list[JsonDoc]:
        return list(self.server.get("/api/v1/jobs", limit=limit, state=state, vm=vm)["items"])

    def show_job(self, job_id: int) -> JsonDoc:
        return dict(self.server.get(f"/api/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: int) -> str:
        return str(self.server.post(f"/api/v1/jobs/{job_id}/cancel")["outcome"])

    def run_now(self, vm: str, full: bool, inventory: str | None) -> int:
        return int(self.server.post(f"/api/v1/vms/{vm}/backup", {"full": full})["id"])

    def list_alerts(self, limit: int) -> list[JsonDoc]:
        return list(self.server.get("/api/v1/alerts", limit=limit)["items"])
