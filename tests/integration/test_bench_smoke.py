"""The benchmark harness runs end to end on a tiny image (timings are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.paths import ROOT


def test_bench_quick_vmvault(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--quick",
            "--tools",
            "vmvault",
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "latest.json").read_text())
    steps = report["summary"]["vmvault"]
    for step in ("backup1", "backup2", "restore"):
        assert steps[step]["n"] == 1 and steps[step]["failed"] == 0, steps[step]
        assert steps[step]["wall_s"] > 0
    assert steps["restore"]["verified"] is True
    assert (out / "latest.md").exists()
    assert "vmvault" in done.stdout


def test_index_scale_at_a_small_size(tmp_path: Path) -> None:
    """bench/index_scale.py end to end at 40 000 chunks: every open answers, nothing new is
    claimable, the daily open reads one index object and the others none."""
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "bench/index_scale.py",
            "--chunks",
            "40k",
            "--lookups",
            "2000",
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "index_scale.json").read_text())
    assert report["built"]["chunks"] == 40_000 and report["built"]["index_objects"] == 3
    assert report["first_open"]["rebuilt"] and report["first_open"]["absorbed"] == 3
    assert not report["open"]["rebuilt"] and report["open"]["absorbed"] == 0
    assert report["open"]["index_entries"] == 40_000 and report["open"]["new_claimable"] == 0
    assert report["daily_open"]["absorbed"] == 1
    assert report["daily_open"]["index_entries"] == 40_000 + 64 * 256
    assert not (tmp_path / "w").exists()  # removed unless --keep
