"""The day simulation (shared admission rules) and the seed's best-practice findings."""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from support.cli import run_cli
from support.paths import ROOT
from vmvault.app.context import Context
from vmvault.inventory import parse_inventory
from vmvault.jobs.admission import Limits
from vmvault.planning.findings import findings
from vmvault.planning.simulate import PlannedDisk, PlannedJob, simulate

MB = 10**6
GB = 10**9


def test_forty_vms_at_once_the_rest_wait() -> None:
    jobs = [
        PlannedJob(f"vm{i:02d}", 0.0, [PlannedDisk(f"p{i % 3}", 20 * GB, 20 * MB)], 1500.0)
        for i in range(50)
    ]
    sim = simulate(jobs, Limits(max_vms=40), {f"p{i}": 10_000 * MB for i in range(3)})
    started_at_once = [t for t in sim.timings if t.start == 0.0]
    assert len(started_at_once) == 40
    waiting = [t for t in sim.timings if t.start != 0.0]
    assert len(waiting) == 10 and all(t.wait == pytest.approx(1020, abs=60) for t in waiting)
    assert sum(sim.pool_load[f"p{i}"][0] for i in range(3)) == pytest.approx(40 * 20 * MB)
    assert {t.vm for t in sim.late} == {t.vm for t in waiting}  # they miss the window


def test_twenty_disks_of_a_pool_at_once() -> None:
    jobs = [PlannedJob(f"vm{i:02d}", 0.0, [PlannedDisk("p", 20 * GB, 20 * MB)]) for i in range(30)]
    sim = simulate(jobs, Limits(), {"p": 10_000 * MB})
    assert len([t for t in sim.timings if t.start == 0.0]) == 20  # the seed's 20 per pool


def test_a_pool_budget_slows_everyone_on_it() -> None:
    jobs = [PlannedJob(f"vm{i}", 0.0, [PlannedDisk("p", 10 * GB, 50 * MB)]) for i in range(4)]
    sim = simulate(jobs, Limits(), {"p": 100 * MB})
    assert sim.peak("p") == pytest.approx(100 * MB)  # 4 x 50 MB/s wanted, 100 allowed
    assert all(t.end == pytest.approx(400, abs=60) for t in sim.timings)  # 10 GB at 25 MB/s


def test_best_practice_findings() -> None:
    vms = []
    for i in range(45):
        tags = ['cloud_service = "shop"'] if i < 12 else []
        if i == 0:
            tags.append('app_write_kb = "4"')
        pool = "prem" if i < 2 else "std"
        vms.append(
            f'[[vms]]\nname = "vm{i}"\npolicy = "night"\ntags = {{ {", ".join(tags)} }}\n'
            f'[[vms.disks]]\nname = "os"\npath = "/d/vm{i}"\npool = "{pool}"\n'
        )
    inv = parse_inventory(
        '[policies.night]\nschedule = { kind = "daily", time = "10:00" }\n'
        "[pools.std]\n[pools.prem]\npremium = true\n" + "\n".join(vms),
        "inv.toml",
    )
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    found = findings(inv, {f"vm{i}": [at] for i in range(45)})
    codes = {f.code for f in found}
    assert codes == {
        "too_many_vms_at_once",
        "too_many_disks_per_pool",
        "too_many_classic_vms",
        "peak_hours",
        "small_app_writes",
        "premium_pool_shared",
    }
    crowd = next(f for f in found if f.code == "too_many_vms_at_once")
    assert len(crowd.subjects) == 45 and "45 VMs start at 10:00" in crowd.message
    assert next(f for f in found if f.code == "premium_pool_shared").subjects == ("vm0", "vm1")


def test_plan_command_from_the_inventory(tmp_path: Path) -> None:
    for name in ("web", "db"):
        (tmp_path / f"{name}.img").write_bytes(os.urandom(2 << 20))
    inv = tmp_path / "inv.toml"
    inv.write_text(f"""
[pools.a]
egress_mb_per_s = 30
[policies.day]
schedule = {{ kind = "daily", time = "10:00" }}
[[vms]]
name = "web"
policy = "day"
[[vms.disks]]
name = "os"
path = "{tmp_path / "web.img"}"
pool = "a"
[[vms]]
name = "db"
policy = "day"
[[vms.disks]]
name = "os"
path = "{tmp_path / "db.img"}"
pool = "a"
""")
    result = run_cli("plan", "--inventory", str(inv), "--day", "2026-12-01", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [j["due"] for j in doc["jobs"]] == ["2026-12-01T10:00+00:00"] * 2
    assert doc["pools"]["a"]["peak_mb_s"] == 30.0  # two disks at 20 MB/s, the pool allows 30
    assert {f["code"] for f in doc["findings"]} == {"peak_hours"}
    proposed = run_cli(
        "plan", "--inventory", str(inv), "--day", "2026-12-01", "--stagger", "--json"
    )
    stagger = json.loads(proposed.stdout)["stagger"]
    assert sorted(stagger["starts"].values()) == [
        "2026-12-01T10:00+00:00",
        "2026-12-01T10:30+00:00",
    ]
    assert stagger["peak_before_mb_s"]["a"] == 30.0 and stagger["peak_after_mb_s"]["a"] == 20.0
    chart = tmp_path / "load.png"
    drawn = run_cli("plan", "--inventory", str(inv), "--day", "2026-12-01", "--chart", str(chart))
    assert drawn.returncode == 0, drawn.stderr
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
    bad = run_cli("plan", "--inventory", str(inv), "--day", "tomorrow")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
    alone = run_cli("plan", "--inventory", str(inv), "--apply")
    assert alone.returncode == 2 and "give both" in alone.stderr


def test_stagger_lowers_the_peak_within_the_rules() -> None:
    from vmvault.planning.stagger import stagger

    jobs = [PlannedJob(f"vm{i}", 0.0, [PlannedDisk("p", 36 * GB, 20 * MB)]) for i in range(6)]
    proposal = stagger(jobs, Limits(), {"p": 10_000 * MB}, step_minutes=30, spread_hours=3)
    assert proposal.peak_before["p"] == pytest.approx(6 * 20 * MB)  # all six at once
    assert proposal.peak_after["p"] <= 2 * 20 * MB + 1  # 30-minute jobs spread over 3 hours
    assert sorted(proposal.starts.values())[0] == 0.0
    assert max(proposal.starts.values()) <= 3 * 3600


def test_stagger_moves_all_runs_of_a_vm_and_stays_in_the_window() -> None:
    from vmvault.planning.stagger import stagger

    disk = [PlannedDisk("p", 36 * GB, 20 * MB)]  # 30 minutes each
    # an hourly VM whose runs at 0 h and 4 h may move less than an hour (its window)
    hourly = [PlannedJob("h", due, disk, latest_start=due + 3600) for due in (0.0, 4 * 3600.0)]
    daily = [PlannedJob(f"d{i}", 0.0, disk) for i in range(3)]
    proposal = stagger([*hourly, *daily], Limits(), {"p": 30 * MB}, spread_hours=3)
    assert proposal.delays["h"] in (0.0, 1800.0)  # never to 1 h or later
    assert proposal.starts["h"] == proposal.delays["h"]  # its first run; the second moved alike
    after = sorted(t.start for t in proposal.after.timings if t.vm == "h")
    assert after[1] - after[0] == 4 * 3600
    assert proposal.after.demand_peak("p") <= 30 * MB  # one disk at a time fits the budget
    assert not proposal.after.waited and proposal.before.demand_peak("p") == 4 * 20 * MB


def fleet_inventory(path: Path) -> Path:
    """200 VMs with 600 disks on 6 pools, every one scheduled at 22:00: too much at once."""
    rnd = random.Random(6)
    parts = [
        "# the whole fleet in one nightly policy\n"
        '[policies.night]\nschedule = { kind = "daily", time = "22:00" }\n'
    ]
    parts += [f"[pools.pool{p}]\negress_mb_per_s = 250\n" for p in range(6)]
    for i in range(200):
        parts.append(f'[[vms]]\nname = "vm{i:03d}"\npolicy = "night"  # as all others\n')
        for k in range(3):
            parts.append(
                f'  [[vms.disks]]\n  name = "disk{k}"\n  path = "/srv/vm{i:03d}-{k}.img"\n'
                f'  role = "{"os" if k == 0 else "data"}"\n  pool = "pool{(i + k) % 6}"\n'
                f"  used_gb = {rnd.randint(10, 50)}\n"
            )
    path.write_text("".join(parts))
    return path


def test_an_oversubscribed_fleet_staggered_applied_and_replayed(
    tmp_path: Path, ctx: Context
) -> None:
    path = fleet_inventory(tmp_path / "fleet.toml")
    args = ("plan", "--inventory", str(path), "--day", "2026-12-01", "--json")
    before = json.loads(run_cli(*args, check=True).stdout)
    assert len(before["jobs"]) == 200
    summary = before["summary"]
    assert not summary["fits"] and summary["jobs_waiting"] == 160  # 40 VMs at once
    assert summary["pools_over_budget"] == [f"pool{p}" for p in range(6)]
    assert all(p["demand_peak_mb_s"] == 400 for p in before["pools"].values())  # 20 disks x 20
    codes = {f["code"] for f in before["findings"]}
    assert {"too_many_vms_at_once", "too_many_disks_per_pool"} <= codes

    applied = json.loads(run_cli(*args, "--stagger", "--apply", check=True).stdout)["stagger"]
    assert applied["applied"] == str(path) and applied["summary_after"]["fits"]
    moved = applied["start"]
    assert 100 < len(moved) < 200  # most VMs move, those that fit at 22:00 stay
    text = path.read_text()
    assert text.startswith("# the whole fleet in one nightly policy\n")
    assert text.count('policy = "night"  # as all others\nstart = "') == len(moved)

    # Re-plan from the written file: the scheduler's rules replayed over the new starts.
    after = json.loads(run_cli(*args, check=True).stdout)
    assert after["summary"] == {
        "fits": True,
        "pools_over_budget": [],
        "jobs_waiting": 0,
        "jobs_late": 0,
    }
    for pool in after["pools"].values():
        assert pool["demand_peak_mb_s"] <= pool["egress_mb_s"] == 250
    for job in after["jobs"]:
        assert job["start"] == job["due"] == applied["starts"][job["vm"]]  # no wait
        assert job["end"] is not None and not job["late"]  # inside its window
    assert "too_many_vms_at_once" not in {f["code"] for f in after["findings"]}

    # The scheduler starts a moved VM at its new time, not at the policy's.
    from vmvault.inventory import load_inventory
    from vmvault.jobs.queue import JobQueue
    from vmvault.jobs.scheduler import SchedulerState, tick

    inventory = load_inventory(path)
    vm, start = next((v, s) for v, s in sorted(moved.items()) if s < "22:00")
    queue = JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)
    state = SchedulerState()
    night = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    tick(queue, inventory, state, night - timedelta(hours=1))  # first sight
    at_22 = {queue.get(j).vm for j in tick(queue, inventory, state, night)}
    assert vm not in at_22 and len(at_22) == 200 - len(moved)
    hours, minutes = map(int, start.split(":"))
    new_time = datetime(2026, 12, 2, hours, minutes, tzinfo=UTC)
    assert vm in {queue.get(j).vm for j in tick(queue, inventory, state, new_time)}


def test_the_readme_example_fleet_is_oversubscribed_until_staggered() -> None:
    from vmvault.inventory import load_inventory
    from vmvault.planning.runner import run_plan

    inv = load_inventory(ROOT / "docs" / "examples" / "fleet.toml")
    plan = run_plan(None, inv, datetime(2026, 12, 1, tzinfo=UTC), stagger=True)
    assert plan["summary"]["pools_over_budget"] == ["hdd", "ssd-a", "ssd-b"]
    assert plan["stagger"]["summary_after"]["fits"]


def test_disks_on_no_pool_are_not_held_by_a_pool_cap() -> None:
    """As in the worker's admission: 30 single-disk VMs on no pool start together."""
    from vmvault.jobs.admission import Limits
    from vmvault.planning.simulate import NO_POOL, PlannedDisk, PlannedJob, simulate

    jobs = [
        PlannedJob(f"vm{i}", 0.0, [PlannedDisk(NO_POOL, 60_000_000, 60e6)], deadline=3600.0)
        for i in range(30)
    ]
    sim = simulate(jobs, Limits(max_disks_per_pool=20), {})
    assert all(t.start == 0.0 for t in sim.timings) and not any(t.late for t in sim.timings)


def test_snapshot_time_delays_the_transfer_in_the_simulated_day() -> None:
    from vmvault.jobs.admission import Limits
    from vmvault.planning.simulate import PlannedDisk, PlannedJob, simulate

    job = PlannedJob("vm", 0.0, [PlannedDisk("p", 60_000_000, 1e6)], deadline=3600.0, setup=120.0)
    sim = simulate([job], Limits(), {"p": 10e6})
    [timing] = sim.timings
    assert timing.start == 0.0 and timing.end == 180.0  # 2 steps of snapshot, 1 of transfer
    assert sim.pool_load["p"][:3] == [0.0, 0.0, 1e6]
