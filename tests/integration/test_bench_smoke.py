"""The benchmark harness runs end to end on a tiny image (timings are not checked here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.paths import ROOT


def _run_script(script: str, *options: str, timeout: float = 300) -> str:
    """A bench script run with this tree's vmvault (in it and in the CLI it starts, whatever
    the venv points at); its stdout."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, script, *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"PYTHONPATH": path},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def run_bench(tmp_path: Path, *options: str, timeout: float = 120) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out"
    stdout = _run_script(
        "bench/run.py",
        "--quick",
        *options,
        *("--workdir", str(tmp_path / "w"), "--out", str(out)),
        timeout=timeout,
    )
    assert (out / "latest.md").exists()
    return json.loads((out / "latest.json").read_text()), stdout


def test_bench_quick_vmvault(tmp_path: Path) -> None:
    report, stdout = run_bench(tmp_path, "--tools", "vmvault", "--stores", "local")
    steps = report["summary"]["vmvault"]
    for step in ("backup1", "backup2", "restore"):
        assert steps[step]["n"] == 1 and steps[step]["failed"] == 0, steps[step]
        assert steps[step]["wall_s"] > 0
    assert steps["restore"]["verified"] is True
    assert report["object_stores"] == {}
    assert "vmvault" in stdout


@pytest.mark.s3
def test_bench_quick_s3(tmp_path: Path) -> None:
    """The object-store path on S3: SeaweedFS started by the bench, requests counted by its
    proxy, for vmvault and (where installed) restic; no local runs."""
    tools = ["vmvault", "restic"] if shutil.which("restic") else ["vmvault"]
    report, stdout = run_bench(tmp_path, "--tools", ",".join(tools), "--stores", "s3", timeout=180)
    assert report["stores"]["s3"]["ok"] is True
    assert report["summary"] == {} or "vmvault" not in report["summary"]  # no local runs
    on_s3 = report["object_stores"]["s3"]
    for tool in tools:
        steps = on_s3[tool]
        for step in ("backup1", "backup2", "restore"):
            cell = steps[step]
            assert cell["n"] == 1 and cell["failed"] == 0, cell
            assert cell["requests_total"] > 0
            assert cell["store_cpu_s"] > 0  # the server and the proxy did some work
        # The 32 MiB image's data (about 10 MB once deduplicated and compressed, by
        # either tool) went up through the proxy, and came back down for the restore.
        assert steps["backup1"]["mb_up"] > 5
        assert steps["restore"]["mb_down"] > 5
        assert steps["restore"]["verified"] is True
        assert steps["backup2"]["requests"]["PUT"] >= 1
    if "restic" in tools:
        assert report["store_ratios"]["s3"]["vmvault incremental requests"] > 0
    assert "s3" in stdout


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


def test_compression_study_at_a_small_size(tmp_path: Path) -> None:
    """bench/compression.py end to end on an 8 MiB bench-mix image: every setting has a row,
    the default's vault is the reference, the scratch directory is removed."""
    out = tmp_path / "out"
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [
            sys.executable,
            "bench/compression.py",
            "--size",
            "8M",
            "--inputs",
            "mix",
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "compression.json").read_text())
    rows = {r["setting"]: r for r in report["inputs"]["mix"]["rows"]}
    assert len(rows) == 13 and rows["3 (default)"]["vault_vs_default"] == 1.0
    assert all(r["out_bytes"] < r["in_bytes"] for r in rows.values() if "out_bytes" in r)
    assert report["inputs"]["mix"]["conclusion"]["fastest_no_larger"] in rows
    assert "## mix:" in (out / "compression.md").read_text()
    assert not (tmp_path / "w").exists()  # removed unless --keep


def test_startup_measures_every_part(tmp_path: Path) -> None:
    """bench/startup.py end to end, one repetition: every process and every part of the
    vault's open has a figure."""
    _run_script("bench/startup.py", "--reps", "1", "--out", str(tmp_path))
    report = json.loads((tmp_path / "startup.json").read_text())
    assert set(report["processes"]) == {
        "python -c pass",
        "vmvault backup --help",
        "incremental backup, nothing changed (1 MiB disk)",
        "full backup (1 MiB disk)",
    }
    assert all(row["wall"] > 0 and row["cpu"] > 0 for row in report["processes"].values())
    assert set(report["vault_open_in_process"]) == {"import", "open and unlock", "chunk index"}


def test_scale_rows_with_a_device_restore(tmp_path: Path) -> None:
    """bench/scale.py end to end on small disks: a size row and a sparse row, each backed up,
    changed, backed up again, restored to a file and to a loop device, and verified."""
    _run_script(
        "bench/scale.py",
        *("--sizes", "32M", "--rates", "1", "--rate-size", "32M"),
        *("--sparse-rows", "64M:40", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path)),
    )
    report = json.loads((tmp_path / "scale.json").read_text())
    rows = report["by_size"] + report["sparse_rows"]
    assert len(rows) == 2
    for row in rows:
        assert row["restore"]["verified"] and row["restore_device"]["verified"], row
