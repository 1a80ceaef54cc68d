"""The planning edge: gather the facts (inventory, the vault's history, the disks) and run
the pure planning functions on them. The CLI (and the API) call these."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmvault.inventory import Inventory, Vm
    from vmvault.planning.cost import Report
    from vmvault.planning.estimate import DiskLoad
    from vmvault.service import Context


def cost_report(ctx: Context, *, currency: str = "USD") -> Report:
    """This month's bill from the vault's own facts (see vmvault.planning.cost for the rules).

    A VM's protected-instance size is the data its latest full read found on its
    non-temporary disks (allocated bytes that are not zeros); its storage is what its
    backups wrote into the vault.
    """
    from vmvault.planning import DiskUsage, PointUsage, PriceTable, VmUsage, monthly_report
    from vmvault.protection import state_of

    vault = ctx.open_vault(load_index=False)
    by_vm: dict[str, list[dict[str, Any]]] = {}
    for point in vault.points():
        by_vm.setdefault(point["vm"], []).append(point)
    usages = []
    for vm, points in sorted(by_vm.items()):
        measured = [p for p in points if all(d["stats"].get("skipped", 0) == 0 for d in p["disks"])]
        latest = (measured or points)[-1]
        disks = [
            DiskUsage(
                max(d["stats"]["read"] - d["stats"]["zero"], 0), d.get("role", "data"), d["name"]
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
                datetime.fromisoformat(points[0]["completed"]),
                state_of(vault, vm).status,
            )
        )
    return monthly_report(usages, PriceTable(currency=currency))


def run_plan(
    ctx: Context | None,
    inventory: Inventory,
    day: datetime,
    *,
    daily_change: float = 0.05,
    stagger: bool = False,
) -> dict[str, Any]:
    """Tonight's schedule, simulated: when each backup starts and ends, each pool's load,
    which jobs miss their window, and the best-practice findings.

    Sizes come from the vault's history where there is one (the data the last full read
    found, the last incremental's changed bytes); before that from the disks themselves
    (their allocated bytes) and the initial-backup rate of the seed's table.
    """
    from vmvault.jobs.worker import limits_of
    from vmvault.planning.estimate import disk_transfers
    from vmvault.planning.findings import findings
    from vmvault.planning.simulate import PlannedDisk, PlannedJob, simulate
    from vmvault.policy import due_times

    start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    history: dict[str, list[dict[str, Any]]] = {}
    if ctx is not None:
        for point in ctx.open_vault(load_index=False).points():
            history.setdefault(point["vm"], []).append(point)
    jobs, starts = [], {}
    for vm in inventory.vms:
        if not vm.policy:
            continue
        schedule = inventory.policy(vm.policy).schedule
        times = due_times(schedule, start - timedelta(seconds=1), start + timedelta(days=1))
        times = [t for t in times if t < start + timedelta(days=1)]
        starts[vm.name] = times
        points = history.get(vm.name, [])
        share, rate = disk_transfers(
            _disk_loads(vm, points[-1] if points else None),
            initial=not points,
            measured_changed_bytes=_changed(points[-1]) if points else None,
            daily_change=daily_change,
            cap_mb_s=inventory.limits.disk_mb_per_s,
        )
        pools = {d.name: d.pool or "(none)" for d in vm.disks}
        planned = [PlannedDisk(pools[d.name], int(size), rate) for d, size in share]
        window = (schedule.window_hours or 24) * 3600.0
        for t in times:
            due = (t - start).total_seconds()
            jobs.append(PlannedJob(vm.name, due, planned, deadline=due + window))
    egress = {name: pool.egress_mb_per_s * 1e6 for name, pool in inventory.pools.items()}
    sim = simulate(jobs, limits_of(inventory), egress)
    proposal = None
    if stagger:
        from vmvault.planning.stagger import stagger as propose

        found = propose(jobs, limits_of(inventory), egress)
        proposal = {
            "starts": {vm: _clock(start, due) for vm, due in sorted(found.starts.items())},
            "peak_before_mb_s": {p: round(v / 1e6, 1) for p, v in found.peak_before.items()},
            "peak_after_mb_s": {p: round(v / 1e6, 1) for p, v in found.peak_after.items()},
        }
    return {
        "stagger": proposal,
        "day": start.date().isoformat(),
        "step_s": sim.step,
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
        "pools": {
            p: {
                "peak_mb_s": round(sim.peak(p) / 1e6, 1),
                "load_mb_s": [round(x / 1e6, 1) for x in sim.pool_load[p]],
            }
            for p in sim.pool_load
        },
        "findings": [f.to_dict() for f in findings(inventory, starts)],
    }


def _disk_loads(vm: Vm, point: dict[str, Any] | None) -> list[DiskLoad]:
    """A VM's disks as the planner sees them: the data its last backup read, or before any
    backup the bytes allocated on the host."""
    from vmvault.planning.estimate import DiskLoad

    seen = {d["name"]: d["stats"] for d in point["disks"]} if point else {}
    loads = []
    for disk in vm.protected_disks():
        if disk.name in seen:
            used = max(seen[disk.name]["read"] - seen[disk.name]["zero"], 0)
        else:
            path = Path(disk.path)
            used = path.stat().st_blocks * 512 if path.exists() else 0
        loads.append(DiskLoad(disk.name, used, disk.role.value))
    return loads


def _changed(point: dict[str, Any]) -> int | None:
    """What the point's backup found changed, if it was an incremental one."""
    if point["type"] != "incremental":
        return None
    return sum(int(d["stats"]["changed"]) for d in point["disks"])


def _clock(day: datetime, seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return (day + timedelta(seconds=seconds)).isoformat(timespec="minutes")
