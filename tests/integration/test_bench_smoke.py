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
