#!/usr/bin/env python3
"""What a backup costs before it reads a byte: vmvault's start-up, part by part.

    .venv/bin/python bench/startup.py [--reps 7] [--out bench/results]

Each figure is the median of ``--reps`` fresh processes (warm page cache), wall and CPU:

- the interpreter alone (``python -c pass``);
- the ``vmvault`` script up to its command being loaded (``vmvault backup --help``);
- the vault opened: the passphrase's key derivation (scrypt, deliberately slow) and the
  keys unwrapped, the host's chunk index opened (in one process, timed apart);
- an incremental backup of a 1 MiB image that did not change (the whole fixed cost of a
  backup: start-up, lock, index, parent, commit, the catalog's job record) and of the same
  disk as a full backup into a fresh vault.

Writes bench/results/startup.json and startup.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_proc
from bench_tools import PASSPHRASE, clean_env, vmvault_command

HERE = Path(__file__).resolve().parent

# Timed inside one process: the vault's open, split into what it does.
_OPEN_PARTS = """
import json, sys, time
t0 = time.perf_counter()
from vmvault.app.context import Context
t1 = time.perf_counter()
ctx = Context(sys.argv[1], sys.argv[2])  # the passphrase from VMVAULT_PASSPHRASE
vault = ctx.open_vault(load_index=False)
t2 = time.perf_counter()
vault.load_index()
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "open and unlock": t2 - t1, "chunk index": t3 - t2}))
"""


def _median_run(argv: list[str], logs: Path, env: dict[str, str], reps: int) -> dict[str, float]:
    walls, cpus = [], []
    for rep in range(reps):
        m = bench_proc.run_timed(argv, logs / f"{argv[-1].replace('/', '_')}-{rep}", env=env)
        if m.rc != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {m.stderr_tail()}")
        walls.append(m.wall)
        cpus.append(m.cpu)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}


def measure(work: Path, reps: int) -> dict[str, Any]:
    vmvault = vmvault_command()
    env = clean_env() | {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": str(work / "vault"),
        "VMVAULT_CATALOG": f"sqlite:///{work / 'catalog.db'}",
        "VMVAULT_CACHE_DIR": str(work / "cache"),
    }
    logs = work / "logs"
    image = work / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    init = bench_proc.run_timed([*vmvault, "init"], logs / "init", env=env)
    if init.rc != 0:
        raise SystemExit(f"vmvault init failed: {init.stderr_tail()}")
    rows: dict[str, Any] = {}
    rows["python -c pass"] = _median_run([sys.executable, "-c", "pass"], logs, env, reps)
    rows["vmvault backup --help"] = _median_run([*vmvault, "backup", "--help"], logs, env, reps)
    first = bench_proc.run_timed(
        [*vmvault, "backup", str(image), "--vm", "vm"], logs / "first", env=env
    )
    if first.rc != 0:
        raise SystemExit(f"first backup failed: {first.stderr_tail()}")
    rows["incremental backup, nothing changed (1 MiB disk)"] = _median_run(
        [*vmvault, "backup", str(image), "--vm", "vm"], logs, env, reps
    )
    rows["full backup (1 MiB disk)"] = _median_run(
        [*vmvault, "backup", str(image), "--vm", "vm", "--full"], logs, env, reps
    )
    parts: list[dict[str, float]] = []
    for rep in range(reps):
        m = bench_proc.run_timed(
            [sys.executable, "-c", _OPEN_PARTS, env["VMVAULT_VAULT"], env["VMVAULT_CATALOG"]],
            logs / f"open-{rep}",
            env=env,
        )
        if m.rc != 0:
            raise SystemExit(f"vault open failed: {m.stderr_tail()}")
        parts.append(json.loads(m.stdout))
    opened = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    return {"reps": reps, "processes": rows, "vault_open_in_process": opened}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# vmvault start-up",
        "",
        f"Date: {result['date']}. Medians of {result['reps']} fresh processes, warm page cache. "
        f"Load average at start {result['load_start']}, at end {result['load_end']}.",
        "",
        "| process | wall s | CPU s |",
        "|---|---|---|",
    ]
    for name, row in result["processes"].items():
        lines.append(f"| {name} | {row['wall']:.3f} | {row['cpu']:.3f} |")
    lines += ["", "| in one process: the vault's open | s |", "|---|---|"]
    for name, seconds in result["vault_open_in_process"].items():
        lines.append(f"| {name} | {seconds:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmvault-startup-"))
    try:
        load_start = os.getloadavg()
        result = measure(work, args.reps)
        result |= {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_start": "/".join(f"{x:.2f}" for x in load_start),
            "load_end": "/".join(f"{x:.2f}" for x in os.getloadavg()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "startup.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
