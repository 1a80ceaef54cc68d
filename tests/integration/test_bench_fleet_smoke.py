"""bench/fleet_throughput.py runs end to end at tiny settings: its own redis-server, one and
two `vmvault worker --host` processes, every backup a success (timings are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import ROOT

pytestmark = pytest.mark.redis

VMS = 3


def test_fleet_throughput_bench_reports_every_round(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    # This tree's vmvault, in the bench and in the workers it starts.
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [
            sys.executable,
            "bench/fleet_throughput.py",
            *("--vms", str(VMS), "--size", "8M", "--workers", "1,2", "--catalog", "sqlite"),
            *("--workdir", str(work), "--out", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"PYTHONPATH": path},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "fleet_throughput.json").read_text())
    assert report["catalog"] == "SQLite"
    assert [run["workers"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        hosts = {f"hv{k + 1}" for k in range(run["workers"])}
        for name in ("full", "incremental"):
            result = run[name]
            assert result["succeeded"] is True
            assert [job["state"] for job in result["jobs"]] == ["succeeded"] * VMS
            # round-robin: every host has a VM, and its own worker ran it
            assert {job["worker"].split("/")[0] for job in result["jobs"]} == hosts
            figures = ("wall_s", "logical_mb_s", "allocated_mb_s", "cpu_s", "machine_cores_busy")
            for figure in figures:
                assert result[figure] > 0, (name, figure, result[figure])
            assert len(result["peak_rss_per_worker"]) == run["workers"]
            assert min(result["peak_rss_per_worker"]) > 0
            assert result["logical_bytes"] == VMS * 8 * 2**20
            assert 0 < result["allocated_bytes"] < result["logical_bytes"]  # holes stay holes
        assert run["incremental"]["changed_bytes"] > 0
        assert all(job["bytes_read"] > 0 for job in run["incremental"]["jobs"])
    ratios = report["ratios"]
    assert ratios["compared"] == "2 vs 1"
    assert ratios["full"]["throughput"] > 0 and ratios["incremental"]["throughput"] > 0
    table = (out / "fleet_throughput.md").read_text()
    assert table.count("| full |") == 2 and table.count("| incremental |") == 2
    assert not work.exists()  # removed without --keep
