"""The day simulation (shared admission rules) and the seed's best-practice findings."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

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
    import json

    from conftest import run_cli

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


def test_stagger_lowers_the_peak_within_the_rules() -> None:
    from vmvault.planning.stagger import stagger

    jobs = [PlannedJob(f"vm{i}", 0.0, [PlannedDisk("p", 36 * GB, 20 * MB)]) for i in range(6)]
    proposal = stagger(jobs, Limits(), {"p": 10_000 * MB}, step_minutes=30, spread_hours=3)
    assert proposal.peak_before["p"] == pytest.approx(6 * 20 * MB)  # all six at once
    assert proposal.peak_after["p"] <= 2 * 20 * MB + 1  # 30-minute jobs spread over 3 hours
    assert sorted(proposal.starts.values())[0] == 0.0
    assert max(proposal.starts.values()) <= 3 * 3600
