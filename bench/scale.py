#!/usr/bin/env python3
"""How vmvault's time and memory grow with disk size and with the change rate.

    .venv/bin/python bench/scale.py [--sizes 1G,4G,16G] [--rates 0.1,1,10] [--rate-size 4G]

For each disk size (at 1 % change) and each change rate (at --rate-size): a fresh image from
vmvault.testdisk, a full backup, a mutation, an incremental backup and a restore of the
latest point (checked against the image), each timed as a whole process (wall, CPU, peak
RSS). Writes bench/results/scale.json and scale.md. vmvault only: the comparison with
restic and borg is bench/run.py's job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import bench_proc
import bench_report
from bench_tools import make_tool

from vmvault import testdisk

HERE = Path(__file__).resolve().parent


def one_series_point(work: Path, size: int, rate: float) -> dict[str, Any]:
    """Full backup, mutation of ``rate`` %, incremental, restore: one row of the table."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    image = work / "src" / "disk.img"
    image.parent.mkdir()
    testdisk.create_disk(image, size, seed=1)
    tool = make_tool("vmvault", work / "vmvault")
    tool.home.mkdir()
    env = tool.env()
    logs = work / "logs"
    init = bench_proc.run_timed(tool.init_cmd(), logs / "init", env=env)
    if init.rc != 0:
        raise SystemExit(f"vmvault init failed: {init.stderr_tail()}")
    row: dict[str, Any] = {"size": size, "rate": rate}
    for step in ("backup1", "backup2"):
        if step == "backup2":
            mutation = testdisk.mutate_disk(image, rate, seed=2)
            row["changed_bytes"] = mutation.bytes_written
        os.sync()
        bench_proc.warm_cache(image)
        before = bench_proc.tree_size(tool.repo)
        m = bench_proc.run_timed(tool.backup_cmd(1, image), logs / step, env=env)
        if m.rc != 0:
            raise SystemExit(f"{step} failed: {m.stderr_tail()}")
        row[step] = _measure(m) | {"growth": bench_proc.tree_size(tool.repo) - before}
        bench_proc.progress(f"scale {size >> 30} GiB {rate} %", f"{step} {m.wall:.2f} s")
    target_dir = work / "restore"
    target_dir.mkdir()
    argv, cwd = tool.restore_cmd(target_dir, image)
    os.sync()
    m = bench_proc.run_timed(argv, logs / "restore", env=env, cwd=cwd)
    if m.rc != 0:
        raise SystemExit(f"restore failed: {m.stderr_tail()}")
    restored = target_dir / image.name
    row["restore"] = _measure(m) | {
        "verified": bench_proc.file_digest(restored) == bench_proc.file_digest(image),
        "allocated": bench_proc.allocated(restored),
    }
    bench_proc.progress(f"scale {size >> 30} GiB {rate} %", f"restore {m.wall:.2f} s")
    shutil.rmtree(work, ignore_errors=True)
    return row


def _measure(m: bench_proc.Measured) -> dict[str, Any]:
    return {"wall": round(m.wall, 3), "cpu": round(m.cpu, 3), "rss": m.maxrss}


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    header = [
        "disk",
        "changed",
        "full s",
        "full RSS MiB",
        "incr s",
        "incr RSS MiB",
        "vault growth / changed",
        "restore s",
        "restore RSS MiB",
        "verified",
    ]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        growth = r["backup2"]["growth"] / max(r["changed_bytes"], 1)
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r['size'] / 2**30:g} GiB",
                    f"{r['rate']:g} % ({r['changed_bytes'] / 1e6:.0f} MB)",
                    f"{r['backup1']['wall']:.2f}",
                    f"{r['backup1']['rss'] / 2**20:.0f}",
                    f"{r['backup2']['wall']:.2f}",
                    f"{r['backup2']['rss'] / 2**20:.0f}",
                    f"{growth:.2f}",
                    f"{r['restore']['wall']:.2f}",
                    f"{r['restore']['rss'] / 2**20:.0f}",
                    "yes" if r["restore"]["verified"] else "NO",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1G,4G,16G")
    ap.add_argument("--rates", default="0.1,1,10")
    ap.add_argument("--rate-size", default="4G")
    ap.add_argument("--workdir", type=Path, default=HERE / "work" / "scale")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    sizes = [testdisk.parse_size(s) for s in args.sizes.split(",") if s]
    rates = [float(r) for r in args.rates.split(",") if r]
    rate_size = testdisk.parse_size(args.rate_size)
    by_size = [one_series_point(args.workdir, s, 1.0) for s in sizes]
    by_rate = []
    for rate in rates:
        done = [r for r in by_size if r["size"] == rate_size and r["rate"] == rate]
        by_rate.append(done[0] if done else one_series_point(args.workdir, rate_size, rate))
    report = {
        "date": bench_report.utc_now().isoformat(timespec="seconds"),
        "machine": bench_report.machine_info(),
        "by_size": by_size,
        "by_rate": by_rate,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2))
    text = (
        f"## Scaling of vmvault ({report['date']})\n\n"
        + markdown(by_size, "By disk size, 1 % changed")
        + "\n"
        + markdown(by_rate, f"By change rate, {rate_size / 2**30:g} GiB disk")
    )
    (args.out / "scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
