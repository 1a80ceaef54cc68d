"""The planning edge: gather the facts (inventory, the vault's history, the disks) and run
the pure planning functions on them. The CLI (and the API) call these."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from vmvault.catalog.backups import backup_wall_times
from vmvault.inventory import write_starts
from vmvault.jobs.admission import limits_of
from vmvault.planning import DiskUsage, PointUsage, PriceTable, VmUsage, monthly_report
from vmvault.planning.estimate import DiskLoad, DiskRun, PastBackup, estimate_backup, measure
from vmvault.planning.findings import findings
from vmvault.planning.simulate import NO_POOL, PlannedDisk, PlannedJob, simulate
from vmvault.planning.stagger import stagger as propose
from vmvault.protection import state_of

if TYPE_CHECKING:
    from vmvault.app.context import Context
    from vmvault.inventory import Inventory, Vm
    from vmvault.model.point import RecoveryPoint
    from vmvault.planning.cost import DiskRole as CostDiskRole
    from vmvault.planning.cost import PriceTable, Report
    from vmvault.planning.estimate import DiskLoad, PastBackup
    from vmvault.planning.simulate import Simulation


def cost_report(
    ctx: Context, *, currency: str | None = None, prices: PriceTable | None = None
) -> Report:
    """This month's bill from the vault's own facts (see vmvault.planning.cost for the rules).

    A VM's protected-instance size is the data its latest full read found on its
    non-temporary disks (allocated bytes that are not zeros); its storage is what its
    backups wrote into the vault.
    """

    vault = ctx.open_vault(load_index=False)
    by_vm: dict[str, list[RecoveryPoint]] = {}
    for point in vault.points():
        by_vm.setdefault(point["vm"], []).append(point)
    usages = []
    for vm, points in sorted(by_vm.items()):
        measured = [p for p in points if all(d["stats"].get("skipped", 0) == 0 for d in p["disks"])]
        latest = (measured or points)[-1]
        disks = [
            DiskUsage(
                max(d["stats"]["read"] - d["stats"]["zero"], 0),
                cast("CostDiskRole", d.get("role", "data")),  # written from inventory.DiskRole
                d["name"],
            )
            for d in latest["disks"]
        ]
        usages.append(
            VmUsage(
                vm,
                disks,
                [
                    PointUsage(vm, {d["name"]: d["stats"]["stored"] for d in p["disks"]})
                    for p in points
                ],
                datetime.fromisoformat(points[0].get("completed") or points[0]["created"]),
                state_of(vault, vm).status,
            )
        )
    table = prices or PriceTable()
    if currency is not None:
        table = replace(table, currency=currency)
    return monthly_report(usages, table)


def run_plan(
    ctx: Context | None,
    inventory: Inventory,
    day: datetime,
    *,
    daily_change: float = 0.05,
    stagger: bool = False,
) -> dict[str, Any]:
    """Tonight's schedule, simulated: when each backup starts and ends, each pool's load and
    demand, which jobs wait or miss their window, the best-practice findings, and per VM the
    estimate of an initial and of an incremental backup with the source of every figure.

    Each VM's runs are its policy's slots of ``day`` (UTC), as its timetable starts them
    (its own ``start`` if it has one, as the scheduler does). Sizes come from the vault's
    history where there is one (the data its last full read found), else from the
    inventory's ``used_gb``, else from the disks themselves (their allocated bytes). Rates,
    reads, changes and snapshot time come from the VM's recent backups of the same kind
    once there are some (``planning.estimate.measure``), else from the seed's table (the
    snapshot time from the backups of the other kind, if any measured it).
    """

    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    history, seen = _history(ctx) if ctx is not None else ({}, {})
    jobs, starts, estimates, timetables = [], {}, {}, {}
    for vm in inventory.vms:
        timetable = inventory.timetable(vm)
        if timetable is None:
            continue
        timetables[vm.name] = timetable
        runs = timetable.runs(start, start + timedelta(days=1))
        starts[vm.name] = [r.start for r in runs]
        past = history.get(vm.name, [])
        disks, data_source = _disk_loads(vm, seen.get(vm.name, {}))
        measured = {kind: measure(past, initial=kind) for kind in (True, False)}
        initial, incremental = (
            estimate_backup(
                disks,
                initial=kind,
                measured=measured[kind],
                daily_change=daily_change,
                cap_mb_s=inventory.limits.disk_mb_per_s,
                other_kind=measured[not kind],
            )
            for kind in (True, False)
        )
        tonight = incremental if past else initial
        estimates[vm.name] = {
            "tonight": tonight.kind,
            "data_source": data_source,
            "initial": initial.to_dict(),
            "incremental": incremental.to_dict(),
        }
        pools = {d.name: d.pool or NO_POOL for d in vm.disks}
        planned = [
            PlannedDisk(pools[d.name], round(d.transfer_bytes), d.rate) for d in tonight.disks
        ]
        for run in runs:
            jobs.append(
                PlannedJob(
                    vm.name,
                    _seconds(start, run.start),
                    planned,
                    deadline=_seconds(start, run.deadline),
                    latest_start=_seconds(start, run.slot + timetable.latest_delay),
                    setup=tonight.snapshot_seconds,
                )
            )
    egress = {name: pool.egress_mb_per_s * 1e6 for name, pool in inventory.pools.items()}
    sim = simulate(jobs, limits_of(inventory), egress)
    proposal = None
    if stagger:
        found = propose(jobs, limits_of(inventory), egress)
        after = found.after
        proposal = {
            "starts": {vm: _clock(start, due) for vm, due in sorted(found.starts.items())},
            # the inventory's ``start`` of each VM the proposal moves (`plan --apply`)
            "start": {
                vm: timetables[vm].delayed(timedelta(seconds=delay)).start
                for vm, delay in sorted(found.delays.items())
                if delay > 0
            },
            "peak_before_mb_s": _mb(found.peak_before),
            "peak_after_mb_s": _mb(found.peak_after),
            "demand_before_mb_s": _mb({p: sim.demand_peak(p) for p in sim.pool_demand}),
            "demand_after_mb_s": _mb({p: after.demand_peak(p) for p in after.pool_demand}),
            "summary_after": _summary(after, egress),
            "load_after_mb_s": {
                p: [round(x / 1e6, 1) for x in v] for p, v in after.pool_load.items()
            },
            "applied": None,
        }
    return {
        "stagger": proposal,
        "day": start.date().isoformat(),
        "step_s": sim.step,
        "summary": _summary(sim, egress),
        "jobs": [
            {
                "vm": t.vm,
                "due": _clock(start, t.due),
                "start": _clock(start, t.start),
                "end": _clock(start, t.end),
                "wait_s": round(t.wait),
                "late": t.late,
            }
            for t in sim.timings
        ],
        "estimates": estimates,
        "pools": {
            p: {
                "peak_mb_s": round(sim.peak(p) / 1e6, 1),
                "demand_peak_mb_s": round(sim.demand_peak(p) / 1e6, 1),
                "egress_mb_s": round(egress[p] / 1e6, 1) if p in egress else None,
                "load_mb_s": [round(x / 1e6, 1) for x in sim.pool_load[p]],
            }
            for p in sim.pool_load
        },
        "findings": [f.to_dict() for f in findings(inventory, starts)],
    }


def apply_stagger(inventory: Inventory, plan: dict[str, Any]) -> Inventory | None:
    """Write the plan's proposed starts into the inventory file the plan was made from (each
    moved VM's ``start``); refused if that file no longer holds the same inventory. None
    when no VM moves: the file is left alone."""

    proposal = plan["stagger"]
    if not proposal["start"]:
        return None
    written = write_starts(inventory.source, proposal["start"], expected=inventory)
    proposal["applied"] = inventory.source
    return written


def _summary(sim: Simulation, egress: dict[str, float]) -> dict[str, Any]:
    """Does the day fit: no pool asked for more than its egress budget, no job waited for
    the admission limits, none ended after its window."""
    over = sorted(p for p in sim.pool_demand if p in egress and sim.demand_peak(p) > egress[p])
    late, waited = len(sim.late), len(sim.waited)
    return {
        "fits": not (over or late or waited),
        "pools_over_budget": over,
        "jobs_waiting": waited,
        "jobs_late": late,
    }


def _history(
    ctx: Context,
) -> tuple[dict[str, list[PastBackup]], dict[str, dict[str, int]]]:
    """Each VM's backups, oldest first, and the data each of its disks held when last read
    in full. Per disk from the recovery points; the whole job's wall time from the catalog."""

    vault = ctx.open_vault(load_index=False)
    wall = backup_wall_times(ctx.catalog(), vault.config.vault_id)
    history: dict[str, list[PastBackup]] = {}
    seen: dict[str, dict[str, int]] = {}
    for point in vault.points():
        disks = []
        for d in point["disks"]:
            stats = d["stats"]
            disks.append(
                DiskRun(
                    d["name"], int(stats["read"]), int(stats["changed"]), stats.get("seconds", 0.0)
                )
            )
            if stats.get("skipped", 0) == 0:  # read in full: the data it holds
                seen.setdefault(point["vm"], {})[d["name"]] = max(stats["read"] - stats["zero"], 0)
        history.setdefault(point["vm"], []).append(
            PastBackup(point["type"] != "incremental", disks, wall.get(point["id"]))
        )
    return history, seen


def _disk_loads(vm: Vm, seen: dict[str, int]) -> tuple[list[DiskLoad], str]:
    """A VM's disks as the planner sees them, and where their sizes came from: the data its
    last full read found, or the inventory's ``used_gb``, or the bytes allocated on this
    host."""

    loads, sources = [], set()
    for disk in vm.protected_disks():
        if disk.name in seen:
            used, source = seen[disk.name], "last backup"
        elif disk.used_gb is not None:
            used, source = round(disk.used_gb * 1e9), "inventory"
        else:
            path = Path(disk.path)
            used, source = (path.stat().st_blocks * 512 if path.exists() else 0), "host"
        sources.add(source)
        loads.append(DiskLoad(disk.name, used, disk.role.value))
    return loads, "+".join(sorted(sources))


def _seconds(day: datetime, moment: datetime) -> float:
    return (moment - day).total_seconds()


def _mb(values: dict[str, float]) -> dict[str, float]:
    return {p: round(v / 1e6, 1) for p, v in values.items()}


def _clock(day: datetime, seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return (day + timedelta(seconds=seconds)).isoformat(timespec="minutes")
