#!/usr/bin/env python3
"""Soak: many cycles of mutate / backup / prune / GC in one process, restores verified.

    .venv/bin/python bench/soak.py [--cycles 200] [--size 128M] [--percent 2] [--verify-every 10]

Each cycle changes ``--percent`` % of a generated disk (`testdisk.mutate_disk`), backs it
up incrementally, applies a retention policy (`prune`) and collects garbage
(`gc --grace 0`), all through the service layer in this one process, as the server's
worker runs them. The points of a soak are minutes apart, so prune looks at them from a
day later (past the instant-restore day): the policy then keeps the day's latest point and
every cycle deletes the one before it, which the cycle's GC frees. Every
``--verify-every`` cycles the latest point is restored and compared byte for byte with the
disk, and `check` runs.

What must hold: every restore is identical, every check clean, and neither the process's
resident memory nor the vault's size grows with the number of cycles (the vault holds the
points the policy keeps, so it settles). The report (JSON + Markdown under --out) gives
the first and last tenth of the run side by side and the growth between them. Not part
of the test suite: it runs for minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean
from typing import Any

from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import PASSPHRASE_ENV, Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore
from vmvault.app.retention import run_prune
from vmvault.app.vaults import init_vault, run_check, run_gc
from vmvault.inventory import load_inventory

HERE = Path(__file__).resolve().parent
POLICY = """
[policies.soak]
schedule = {{ kind = "daily", time = "22:00", timezone = "UTC" }}
retention = {{ instant_restore_days = 1, daily_days = 7 }}

[[vms]]
name = "soak"
policy = "soak"
  [[vms.disks]]
  name = "os"
  path = "{image}"
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def rss_bytes() -> int:
    """The process's resident set now (not its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def digest(path: Path) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    os.environ.setdefault(PASSPHRASE_ENV, "soak passphrase")
    # The host's chunk index of the soak's vault goes with its scratch, not into ~/.cache.
    os.environ.setdefault("VMVAULT_CACHE_DIR", str(work / "cache"))
    ctx = Context(str(work / "vault"), f"sqlite:///{work / 'catalog.db'}")
    init_vault(ctx)
    image = work / "disk.img"
    testdisk.create_disk(image, parse_size(args.size), seed=1)
    inventory_file = work / "inventory.toml"
    inventory_file.write_text(POLICY.format(image=image))
    inventory = load_inventory(str(inventory_file))
    cycles: list[dict[str, Any]] = []
    failures: list[str] = []
    for n in range(1, args.cycles + 1):
        row: dict[str, Any] = {"cycle": n}
        if n > 1:
            testdisk.mutate_disk(image, args.percent, seed=1000 + n)
        started = time.perf_counter()
        point = run_backup(ctx, "soak", [DiskSpec("os", str(image))])
        row["backup_s"] = time.perf_counter() - started
        row["changed"] = point["disks"][0]["stats"]["changed"]
        started = time.perf_counter()
        pruned = run_prune(ctx, inventory, now=datetime.now(UTC) + timedelta(days=1))
        row["prune_s"] = time.perf_counter() - started
        row["pruned"] = len(pruned["vms"]["soak"]["prune"])
        started = time.perf_counter()
        gc = run_gc(ctx, grace=0)
        row["gc_s"] = time.perf_counter() - started
        row["freed"] = gc.bytes_freed
        if n % args.verify_every == 0 or n == args.cycles:
            target = work / "restored.img"
            started = time.perf_counter()
            run_restore(ctx, "latest", str(target))
            row["restore_s"] = time.perf_counter() - started
            row["restore_identical"] = digest(target) == digest(image)
            target.unlink()
            report = run_check(ctx)
            row["check_ok"] = report.ok
            if not row["restore_identical"]:
                failures.append(f"cycle {n}: restore differs from the disk")
            if not report.ok:
                failures.append(f"cycle {n}: check found {len(report.problems)} problem(s)")
        row["points"] = len(ctx.open_vault(load_index=False).point_ids())
        row["vault_bytes"] = tree_bytes(work / "vault")
        row["rss"] = rss_bytes()
        cycles.append(row)
        if not args.quiet:
            print(
                f"cycle {n:4d}: backup {row['backup_s']:.2f} s, gc {row['gc_s']:.2f} s, "
                f"{row['points']} points, vault {row['vault_bytes'] / 1e6:.1f} MB, "
                f"rss {row['rss'] / 1e6:.0f} MB"
                + (f", restore ok={row['restore_identical']}" if "restore_s" in row else ""),
                flush=True,
            )
    return {"cycles": cycles, "failures": failures}


def summarise(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    rows = run["cycles"]
    tenth = max(1, len(rows) // 10)
    # Memory and the vault warm up (allocator arenas, thread pools; packs partly dead but
    # below the repack threshold accumulate up to that threshold): "flat" means the middle
    # tenth of the run and the last one agree.
    middle = len(rows) // 2
    early, late = rows[middle : middle + tenth], rows[-tenth:]

    def avg(part: list[dict[str, Any]], key: str) -> float:
        return mean(r[key] for r in part)

    summary = {
        "cycles": len(rows),
        "size": args.size,
        "percent": args.percent,
        "restores_verified": sum(1 for r in rows if "restore_identical" in r),
        "restores_identical": sum(1 for r in rows if r.get("restore_identical")),
        "checks_ok": sum(1 for r in rows if r.get("check_ok")),
        "rss_first_mb": avg(rows[:tenth], "rss") / 1e6,
        "rss_middle_mb": avg(early, "rss") / 1e6,
        "rss_last_mb": avg(late, "rss") / 1e6,
        "rss_max_mb": max(r["rss"] for r in rows) / 1e6,
        "vault_early_mb": avg(early, "vault_bytes") / 1e6,
        "vault_last_mb": avg(late, "vault_bytes") / 1e6,
        "vault_max_mb": max(r["vault_bytes"] for r in rows) / 1e6,
        "points_last": rows[-1]["points"],
        "backup_s_first": avg(rows[1 : tenth + 1] or rows[:1], "backup_s"),
        "backup_s_last": avg(late, "backup_s"),
        "gc_s_last": avg(late, "gc_s"),
        "failures": run["failures"],
    }
    summary["rss_growth"] = summary["rss_last_mb"] / summary["rss_middle_mb"]
    summary["vault_growth"] = summary["vault_last_mb"] / summary["vault_early_mb"]
    return summary


def markdown(summary: dict[str, Any]) -> str:
    s = summary
    return "\n".join(
        [
            f"Soak: {s['cycles']} cycles of {s['percent']} % change on a {s['size']} disk "
            "(backup, prune, gc --grace 0 each cycle)",
            "",
            "| | first tenth | middle tenth | last tenth | last / middle |",
            "|---|---|---|---|---|",
            f"| resident memory | {s['rss_first_mb']:.0f} MB | {s['rss_middle_mb']:.0f} MB | "
            f"{s['rss_last_mb']:.0f} MB | {s['rss_growth']:.2f}x |",
            f"| vault size | | {s['vault_early_mb']:.1f} MB | "
            f"{s['vault_last_mb']:.1f} MB | {s['vault_growth']:.2f}x |",
            f"| incremental backup | {s['backup_s_first']:.2f} s | | "
            f"{s['backup_s_last']:.2f} s | |",
            "",
            f"Restores verified: {s['restores_identical']}/{s['restores_verified']} identical; "
            f"checks clean: {s['checks_ok']}/{s['restores_verified']}; points kept at the "
            f"end: {s['points_last']}; peak RSS {s['rss_max_mb']:.0f} MB; failures: "
            f"{len(s['failures'])}.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--size", default="128M")
    parser.add_argument("--percent", type=float, default=2.0)
    parser.add_argument("--verify-every", type=int, default=10)
    parser.add_argument("--workdir", default=None, help="scratch (default: a temp dir)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmvault-soak-", dir=args.workdir))
    try:
        run = soak(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(args, run)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"soak-{stamp}.json").write_text(json.dumps({**run, "summary": summary}, indent=1))
    text = markdown(summary)
    (out / "soak-latest.md").write_text(text + "\n")
    print(text)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
