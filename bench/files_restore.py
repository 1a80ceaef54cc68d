#!/usr/bin/env python3
"""File-level restore: time to first byte of one file from a point, and a 100 MiB file
copied out by `vmvault files get` against `restic dump` of the same file.

    .venv/bin/python bench/files_restore.py [--size 4G] [--reps 3] [--work DIR] [--keep]

A tree of files (about 55 % of --size: small text files, one 100 MiB file, files of
256 KiB..256 MiB in a few directories) is cut from the data of a vmvault.testdisk image
(seed 1: text, random bytes, written zeros, copies), and mkfs.ext4 -d puts it on a raw disk
of --size with no partition table (vmvault's volume `disk`). vmvault backs up the disk
image; restic backs up the tree (what a restic user backs up). Then, per repetition, each
measurement is a fresh process started after `sync; echo 3 > /proc/sys/vm/drop_caches`
(root): `vmvault files get` of a small file (an upper bound on time to first byte),
`vmvault files ls` of a directory, the same get split in one process (imports, open point
and volumes, file system and path, read), Python start-up and imports, and the 100 MiB file
with `vmvault files get` and `restic dump latest PATH > OUT` (both checked byte for byte
against the tree, and once more from a warm page cache). Writes
bench/results/files_restore.json and .md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import bench_proc
import bench_report
import bench_tools

from vmvault import testdisk

HERE = Path(__file__).resolve().parent
MiB = testdisk.MiB
BIG_FILE = "srv/backup/db-dump.bin"  # the 100 MiB file, relative to the tree
SMALL_FILE = "etc/hostname"
LISTED_DIR = "etc"
TREE_SHARE = 0.55  # of the disk's size, in files
VOLUME = "disk"  # a file system on the whole disk: no partition table

# One process timed from the inside, the way `vmvault files get` runs (app/files.py's
# get_files), each phase apart; prints one JSON document.
SPLIT_PROBE = r"""
import json, os, sys, time
t0 = time.monotonic()
from vmvault.app.context import Context
from vmvault.app.files import open_point_disk
from vmvault.files.extract import Extractor, open_target
t1 = time.monotonic()
import dissect.extfs, dissect.volume.disk
t2 = time.monotonic()
point, path, to = sys.argv[1:4]
ctx = Context(os.environ["VMVAULT_VAULT"], None, None)
with open_point_disk(ctx, point) as pd:
    t3 = time.monotonic()
    blocks_open = pd.blocks_fetched()
    where = pd.browser.locate(path)
    t4 = time.monotonic()
    blocks_fs = pd.blocks_fetched()
    fd = open_target(to)
    try:
        Extractor(fd).extract(where.node, path.rsplit("/", 1)[-1], where.path, to)
    finally:
        os.close(fd)
    t5 = time.monotonic()
    blocks_all = pd.blocks_fetched()
print(json.dumps({
    "imports_vmvault": t1 - t0, "imports_dissect": t2 - t1, "open_point_volumes": t3 - t2,
    "fs_and_path": t4 - t3, "read_and_write": t5 - t4, "total": t5 - t0,
    "blocks_open": blocks_open, "blocks_fs": blocks_fs - blocks_open,
    "blocks_read": blocks_all - blocks_fs,
}))
"""

IMPORTS = {
    "python -c pass": "pass",
    "import vmvault.cli.main": "import vmvault.cli.main",
    "import dissect.extfs, dissect.volume": "import dissect.extfs, dissect.volume.disk",
    "import vmvault.app.files": "import vmvault.app.files",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="4G", help="disk image size (default 4G)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians (default 3)")
    p.add_argument(
        "--work", type=Path, default=HERE / "work" / "files_restore", help="scratch directory"
    )
    p.add_argument("--out", type=Path, default=HERE / "results", help="JSON and Markdown")
    p.add_argument("--keep", action="store_true", help="keep the image, tree and repositories")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be >= 1")
    return args


def uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True)
    return done.stdout.strip()


def drop_caches() -> None:
    """Cold page cache: the vault, the repository, the Python modules and the tools too."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def tree_plan(size: int, seed: int = 1) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """(path, bytes) of the files cut from the generator's data, and the small text files."""
    rng = random.Random(f"vmvault files_restore tree v1|{size}|{seed}")
    total = int(size * TREE_SHARE)
    big = min(100 * MiB, total // 4)
    texts: dict[str, str] = {SMALL_FILE: "guest-one\n"}
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "server",
        "client",
        "port",
        "user",
        "path",
        "cache",
        "log",
        "level",
        "on",
        "off",
    ]
    for i in range(150):
        folder = "etc" if i < 100 else "home/user/notes"
        lines = [
            f"{rng.choice(words)}_{k} = {rng.choice(words)} {rng.randint(0, 99999)}"
            for k in range(rng.randint(10, 400))
        ]
        texts[f"{folder}/file-{i:03d}.conf"] = "\n".join(lines) + "\n"
    files = [(BIG_FILE, big)]
    left = total - big - sum(len(t) for t in texts.values())
    folders = ("srv/data", "var/log", "home/user/media", "opt/app")
    upper = max(256 * 1024, min(256 * MiB, total // 8))
    n = 0
    while left > 0:
        want = int(2 ** rng.uniform(18, upper.bit_length() - 1))
        want = min(max(4096, want), left)
        files.append((f"{folders[n % len(folders)]}/f{n:04d}.bin", want))
        left -= want
        n += 1
    return files, texts


def make_tree(work: Path, size: int) -> dict[str, Any]:
    """Cut the files out of a generated image's data ranges (holes skipped), in plan order."""
    tree = work / "tree"
    files, texts = tree_plan(size)
    need = sum(n for _, n in files)
    source = work / "source.img"
    # 60 % of a generated image is data (40 % holes); a margin for the rounding
    source_size = (need * 10 // 6 // MiB + 64) * MiB
    bench_proc.progress("setup", f"generating {source_size / 2**30:.2f} GiB of test data")
    testdisk.create_disk(source, source_size, seed=1)
    ranges = list(bench_proc.data_ranges(source))
    r, pos = 0, ranges[0][0]
    with open(source, "rb") as src:
        for rel, n in files:
            path = tree / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as dst:
                left = n
                while left:
                    if pos >= ranges[r][1]:
                        r += 1
                        pos = ranges[r][0]
                    step = min(left, ranges[r][1] - pos)
                    done = os.copy_file_range(src.fileno(), dst.fileno(), step, pos)
                    if done <= 0:
                        raise OSError(f"copy_file_range stopped at {pos} of {source}")
                    pos += done
                    left -= done
    source.unlink()
    for rel, text in texts.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {
        "files": len(files) + len(texts),
        "bytes": bench_proc.tree_size(tree),
        "big_file_bytes": (tree / BIG_FILE).stat().st_size,
        "small_file_bytes": (tree / SMALL_FILE).stat().st_size,
        "directories": sum(1 for p in tree.rglob("*") if p.is_dir()),
        "listed_entries": len(list((tree / LISTED_DIR).iterdir())),
    }


def make_image(work: Path, size: int) -> Path:
    image = work / "src" / "disk.img"
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    bench_proc.progress("setup", f"mkfs.ext4 -d tree on a {size / 2**30:g} GiB image")
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "bench", "-d", str(work / "tree"), str(image)],
        check=True,
        capture_output=True,
    )
    os.sync()
    return image


def measured(m: bench_proc.Measured) -> dict[str, Any]:
    return {"ok": m.rc == 0, "wall": m.wall, "cpu": m.cpu, "rss": m.maxrss}


def checked(label: str, m: bench_proc.Measured) -> bench_proc.Measured:
    if m.rc != 0:
        raise SystemExit(f"{label} failed (exit {m.rc}):\n{m.stderr_tail()}")
    return m


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.work.resolve()
        self.logs = self.work / "logs"
        self.size = testdisk.parse_size(args.size)
        self.vmvault = bench_tools.make_tool("vmvault", self.work / "vmvault")
        self.restic = bench_tools.make_tool("restic", self.work / "restic")
        self.point = ""
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.split: dict[str, list[dict[str, Any]]] = {}
        self.split_errors: list[str] = []
        self.count = 0

    def run(self, label: str, argv: list[str], env: dict[str, str], *, cold: bool) -> Any:
        """One timed fresh process; its figures under ``label``."""
        if cold:
            drop_caches()
        self.count += 1
        stem = self.logs / f"{self.count:03d}-{label.replace(' ', '_').replace('/', '_')}"
        m = checked(label, bench_proc.run_timed(argv, stem, env=env))
        self.rows.setdefault(label, []).append(measured(m))
        return m

    def backups(self, image: Path) -> dict[str, Any]:
        """vmvault backs up the image, restic the tree; page cache warm, as bench/run.py."""
        out: dict[str, Any] = {}
        vm, rs = self.vmvault, self.restic
        for tool in (vm, rs):
            tool.home.mkdir(parents=True)
            checked(
                f"{tool.name} init",
                bench_proc.run_timed(
                    tool.init_cmd(), self.logs / f"{tool.name}-init", env=tool.env()
                ),
            )
        bench_proc.warm_cache(image)
        m = checked(
            "vmvault backup",
            bench_proc.run_timed(
                vm.backup_cmd(1, image), self.logs / "vmvault-backup", env=vm.env()
            ),
        )
        doc = json.loads(m.stdout)
        self.point = doc["id"]
        out["vmvault"] = measured(m) | {"repo_bytes": bench_proc.tree_size(vm.repo)}
        bench_proc.progress("backup", f"vmvault {m.wall:.1f} s, point {self.point}")
        tree = self.work / "tree"
        for path in tree.rglob("*"):
            if path.is_file():
                bench_proc.warm_cache(path)
        argv = ["restic", "backup", "-q", str(tree)]
        m = checked(
            "restic backup", bench_proc.run_timed(argv, self.logs / "restic-backup", env=rs.env())
        )
        out["restic"] = measured(m) | {"repo_bytes": bench_proc.tree_size(rs.repo)}
        bench_proc.progress("backup", f"restic {m.wall:.1f} s")
        return out

    def probe(self, label: str, path: str, to: Path, env: dict[str, str]) -> None:
        """The get of ``path`` timed phase by phase inside one process, cold."""
        drop_caches()
        argv = [sys.executable, "-c", SPLIT_PROBE, self.point, path, str(to)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # the other figures do not depend on it
            tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            self.split_errors.append(f"{label}: {tail[0]}")
            bench_proc.progress("split", f"{label} FAILED: {tail[0]}")
            return
        self.split.setdefault(label, []).append(json.loads(done.stdout))

    def files_cmd(self, *args: str) -> list[str]:
        return [*bench_tools.vmvault_command(), "files", *args]

    def one_rep(self, rep: int) -> None:
        vm_env, rs_env = self.vmvault.env(), self.restic.env()
        py = sys.executable
        out = self.work / "out" / str(rep)
        small = f"/{VOLUME}/{SMALL_FILE}"
        big = f"/{VOLUME}/{BIG_FILE}"
        for cold in (True, False):
            state = "cold" if cold else "warm"
            for label, code in IMPORTS.items():
                self.run(f"{label} ({state})", [py, "-c", code], vm_env, cold=cold)
        self.run(
            "files ls (cold)",
            self.files_cmd("ls", self.point, f"/{VOLUME}/{LISTED_DIR}"),
            vm_env,
            cold=True,
        )
        self.run(
            "files get small (cold)",
            self.files_cmd("get", self.point, small, "--to", str(out / "small")),
            vm_env,
            cold=True,
        )
        check_same(out / "small" / Path(SMALL_FILE).name, self.work / "tree" / SMALL_FILE)
        self.probe("small", small, out / "split-small", vm_env)
        self.run(
            "files ls (warm)",
            self.files_cmd("ls", self.point, f"/{VOLUME}/{LISTED_DIR}"),
            vm_env,
            cold=False,
        )
        self.run(
            "files get small (warm)",
            self.files_cmd("get", self.point, small, "--to", str(out / "small-warm")),
            vm_env,
            cold=False,
        )
        source = self.work / "tree" / BIG_FILE
        restic_path = str(self.work / "tree" / BIG_FILE)
        for cold in (True, False):
            state = "cold" if cold else "warm"
            # alternate which tool goes first from one repetition to the next
            order = ("vmvault", "restic") if rep % 2 else ("restic", "vmvault")
            for tool in order:
                if tool == "vmvault":
                    dest = out / f"big-{state}"
                    self.run(
                        f"files get big ({state})",
                        self.files_cmd("get", self.point, big, "--to", str(dest)),
                        vm_env,
                        cold=cold,
                    )
                    check_same(dest / source.name, source)
                else:
                    dest_file = out / f"restic-{state}.bin"
                    cmd = 'exec restic dump latest "$1" > "$2"'
                    self.run(
                        f"restic dump big ({state})",
                        ["sh", "-c", cmd, "sh", restic_path, str(dest_file)],
                        rs_env,
                        cold=cold,
                    )
                    check_same(dest_file, source)
        self.probe("big", big, out / "split-big", vm_env)
        shutil.rmtree(out)
        bench_proc.progress(f"rep {rep}", "done")


def check_same(copy: Path, source: Path) -> None:
    if bench_proc.file_digest(copy) != bench_proc.file_digest(source):
        raise SystemExit(f"{copy} differs from {source}")


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall"] for r in rows]
    return {
        "n": len(rows),
        "wall": statistics.median(walls),
        "wall_min": min(walls),
        "wall_max": max(walls),
        "cpu": statistics.median(r["cpu"] for r in rows),
        "rss": statistics.median(r["rss"] for r in rows),
    }


def split_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for state in ("cold", "warm"):
        vm = results[f"files get big ({state})"]
        rs = results[f"restic dump big ({state})"]
        out[state] = {"wall": rs["wall"] / vm["wall"], "cpu": rs["cpu"] / vm["cpu"]}
    return out


def markdown(report: dict[str, Any]) -> str:
    m, tree, img = report["machine"], report["tree"], report["image"]
    lines = [
        f"## File-level restore ({report['date']})",
        "",
        f"Command: `{report['command']}`. Machine: {m.get('nproc')} cores "
        f"({m.get('cpu', '?')}), {m.get('ram_bytes', 0) / 2**30:.0f} GiB RAM, "
        f"{report['versions']['vmvault']}, {report['versions']['restic']}.",
        f"Load: before `{report['uptime_start']}`; after `{report['uptime_end']}`.",
        "",
        f"Disk: {img['size'] / 2**30:g} GiB raw image, one ext4 file system on the whole disk "
        f"(volume `{VOLUME}`), made with `mkfs.ext4 -d` from {tree['files']} files "
        f"({tree['bytes'] / 2**30:.2f} GiB, {tree['directories']} directories) cut from "
        "vmvault.testdisk data (seed 1). vmvault backed up the image "
        f"({report['backups']['vmvault']['wall']:.1f} s, vault "
        f"{report['backups']['vmvault']['repo_bytes'] / 1e6:.0f} MB); restic backed up the "
        f"tree ({report['backups']['restic']['wall']:.1f} s, repository "
        f"{report['backups']['restic']['repo_bytes'] / 1e6:.0f} MB).",
        "",
        "Each row is a fresh process; cold = after `sync; echo 3 > /proc/sys/vm/drop_caches`"
        " (the vault, the repository, Python's modules and the tools' binaries all read"
        f" from disk). Medians of {report['args']['reps']} repetitions; every copy was checked"
        " byte for byte against the tree.",
        "",
        "| measurement | n | wall s | min-max s | CPU s | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for label, s in report["results"].items():
        lines.append(
            f"| {label} | {s['n']} | {s['wall']:.2f} | {s['wall_min']:.2f}-{s['wall_max']:.2f}"
            f" | {s['cpu']:.2f} | {s['rss'] / 2**20:.0f} |"
        )
    r = report["ratios"]
    lines += [
        "",
        f"big = {BIG_FILE} ({tree['big_file_bytes'] / MiB:.0f} MiB), small = {SMALL_FILE}"
        f" ({tree['small_file_bytes']} bytes), ls = `files ls` of /{VOLUME}/{LISTED_DIR}"
        f" ({tree['listed_entries']} entries).",
        "",
        "restic dump / vmvault files get, big file: "
        f"cold {r['cold']['wall']:.2f}x wall, {r['cold']['cpu']:.2f}x CPU; "
        f"warm {r['warm']['wall']:.2f}x wall, {r['warm']['cpu']:.2f}x CPU (> 1: vmvault faster).",
        "",
        "`files get` in one process, cold (median seconds of each phase, and the vault"
        " blocks each read):",
        "",
        "| file | imports vmvault | imports dissect | open point, volumes | file system, path"
        " | read, write | total | blocks: open / fs / file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, p in report["split"].items():
        phases = ("imports_vmvault", "imports_dissect", "open_point_volumes", "fs_and_path")
        cells = [f"{p[k]:.3f}" for k in (*phases, "read_and_write", "total")]
        blocks = f"{p['blocks_open']:.0f} / {p['blocks_fs']:.0f} / {p['blocks_read']:.0f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {blocks} |")
    lines += [f"- in-process split FAILED: {e}" for e in report["split_errors"]]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("files_restore.py drops the page cache: run it as root")
    if shutil.which("mkfs.ext4") is None:
        raise SystemExit("mkfs.ext4 not found (e2fsprogs)")
    if bench_tools.ensure_tools(["restic"]):
        raise SystemExit("restic is needed")
    bench = Bench(args)
    shutil.rmtree(bench.work, ignore_errors=True)
    bench.work.mkdir(parents=True)
    started, start_uptime = bench_report.utc_now(), uptime()
    try:
        tree = make_tree(bench.work, bench.size)
        image = make_image(bench.work, bench.size)
        backups = bench.backups(image)
        for rep in range(1, args.reps + 1):
            bench.one_rep(rep)
    finally:
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
    results = {label: summary(rows) for label, rows in bench.rows.items()}
    report = {
        "date": started.isoformat(),
        "command": " ".join(["bench/files_restore.py", *(sys.argv[1:] if argv is None else argv)]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": bench_report.machine_info(),
        "versions": bench_report.versions(["vmvault", "restic"]),
        "uptime_start": start_uptime,
        "uptime_end": uptime(),
        "loadavg_end": list(os.getloadavg()),
        "image": {"size": bench.size, "volume": VOLUME},
        "tree": tree,
        "backups": backups,
        "results": results,
        "ratios": ratios(results),
        "split": {label: split_summary(runs) for label, runs in bench.split.items()},
        "split_runs": bench.split,
        "split_errors": bench.split_errors,
        "runs": bench.rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "files_restore.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "files_restore.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
