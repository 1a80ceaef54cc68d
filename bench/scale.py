#!/usr/bin/env python3
"""How vmvault's time and memory grow with disk size and with the change rate.

    .venv/bin/python bench/scale.py [--sizes 1G,4G,16G] [--rates 0.1,1,10] [--rate-size 4G]
                                    [--sparse-rows 64G:40] [--out bench/results]

For each disk size (at 1 % change), each change rate (at --rate-size) and each large sparse
disk of --sparse-rows (SIZE:ALLOCATED_PERCENT, at 1 % change): a fresh image from
vmvault.testdisk, a full backup, a mutation, an incremental backup, a restore of the latest
point to a file and one to a loop device (each checked against the image), each timed as a
whole process (wall, CPU, peak RSS). A row that would not fit in the work directory's free
space (less a reserve) is skipped and says so. Writes OUT/scale.json and scale.md. vmvault
only: the comparison with restic and borg is bench/run.py's job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import bench_proc
import bench_report
from bench_tools import make_tool, vmvault_command

from vmvault import testdisk

HERE = Path(__file__).resolve().parent
GB = 10**9  # decimal, like the MB of the other reports
RESERVE = 5 * GB  # left free for everyone else on a shared machine
DEFAULT_SHARE = 0.6  # testdisk's default written share
# The vault holds about 0.37 of the image's allocated bytes at the generator's mix (random
# stored as is, text compressed ~3x, zeros and dups free); 0.5 leaves a margin.
VAULT_SHARE = 0.5
SPARSE_RATE = 1.0  # percent changed before the incremental of a --sparse-rows row


def human_size(size: int) -> str:
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / 2**20:g} MiB"


def bytes_needed(size: int, share: float, rate: float) -> int:
    """Peak disk use of a row: the vault beside the image, then beside the file restore
    (the image is gone by then: the restore is checked against its digest).

    A mutation's writes into holes add to the image and to the restore. The device restore
    comes after the file restore is gone and is checked on its own (``device_bytes_needed``).
    """
    allocated = size * share
    mutated = size * rate / 100
    return int(allocated * (1 + VAULT_SHARE) + mutated)


def device_bytes_needed(data: int) -> int:
    """Disk use of the loop device's backing file after a restore: the restored data only.

    The engine makes every block a device does not get data for a hole (fallocate
    PUNCH_HOLE), which a loop device passes to its file: it stays as sparse as the file
    restore (``data``: that restore's allocated bytes).
    """
    return data


def free_bytes(path: Path) -> int:
    """Free space of the file system ``path`` will be on (it may not exist yet)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def device_support() -> str | None:
    """Why a restore to a loop device cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "not root (losetup needs it)"
    if shutil.which("losetup") is None:
        return "losetup not installed"
    return None


def one_series_point(
    work: Path,
    size: int,
    rate: float,
    *,
    allocated: float | None = None,
    device_missing: str | None = None,
) -> dict[str, Any]:
    """Full backup, mutation of ``rate`` %, incremental, restores: one row of the table.

    ``allocated`` is the image's written share (None: the generator's default). The row is
    skipped, with the reason in it, when it would not fit in the free space less RESERVE.
    """
    share = DEFAULT_SHARE if allocated is None else allocated
    row: dict[str, Any] = {"size": size, "rate": rate, "share": share}
    shutil.rmtree(work, ignore_errors=True)  # a previous run's leftovers count as used
    lacking = no_room(work, bytes_needed(size, share, rate))
    if lacking:
        row["skipped"] = lacking
        bench_proc.progress(_label(row), f"skipped: {lacking}")
        return row
    try:
        _measure_row(work, row, allocated, device_missing)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the next row starts with the space free
    return row


def no_room(work: Path, need: int) -> str | None:
    """Why ``need`` bytes do not fit in the work directory's free space less RESERVE."""
    free = free_bytes(work)
    if need <= free - RESERVE:
        return None
    return f"needs ~{need / GB:.0f} GB, {free / GB:.0f} GB free ({RESERVE / GB:.0f} GB reserve)"


def _measure_row(
    work: Path, row: dict[str, Any], allocated: float | None, device_missing: str | None
) -> None:
    size, rate, label = row["size"], row["rate"], _label(row)
    work.mkdir(parents=True)
    image = work / "src" / "disk.img"
    image.parent.mkdir()
    testdisk.create_disk(image, size, seed=1, allocated=allocated)
    row["allocated_bytes"] = bench_proc.allocated(image)
    tool = make_tool("vmvault", work / "vmvault")
    tool.home.mkdir()
    env = tool.env()
    logs = work / "logs"
    init = bench_proc.run_timed(tool.init_cmd(), logs / "init", env=env)
    if init.rc != 0:
        raise SystemExit(f"vmvault init failed: {init.stderr_tail()}")
    for step in ("backup1", "backup2"):
        if step == "backup2":
            mutation = testdisk.mutate_disk(image, rate, seed=2)
            row["changed_bytes"] = mutation.bytes_written
        os.sync()
        # vmvault reads only the allocated ranges (SEEK_DATA): reading the holes too would
        # warm nothing it uses, and fill the page cache with zero pages on a huge image.
        bench_proc.warm_cache(image, data_only=True)
        before = bench_proc.tree_size(tool.repo)
        image_allocated = bench_proc.allocated(image)
        m = bench_proc.run_timed(tool.backup_cmd(1, image), logs / step, env=env)
        if m.rc != 0:
            raise SystemExit(f"{step} failed: {m.stderr_tail()}")
        row[step] = _measure(m) | {
            "growth": bench_proc.tree_size(tool.repo) - before,
            "image_allocated": image_allocated,
        }
        bench_proc.progress(label, f"{step} {m.wall:.2f} s")
    digest = bench_proc.file_digest(image)
    # Checked against the digest from here on: the restores get the image's space (a
    # 64 GiB disk at 40 % is 27 GB of data, and the machine's disk holds ~60 GB free).
    image.unlink()
    target_dir = work / "restore"
    target_dir.mkdir()
    argv, cwd = tool.restore_cmd(target_dir, image)
    os.sync()
    m = bench_proc.run_timed(argv, logs / "restore", env=env, cwd=cwd)
    if m.rc != 0:
        raise SystemExit(f"restore failed: {m.stderr_tail()}")
    restored = target_dir / image.name
    row["restore"] = _measure(m) | {
        "verified": bench_proc.file_digest(restored) == digest,
        "allocated": bench_proc.allocated(restored),
    }
    bench_proc.progress(label, f"restore {m.wall:.2f} s")
    # The device is checked against the digest too: the file restore's space goes to the
    # device's backing file, which ends as large as the restored data.
    shutil.rmtree(target_dir)
    lacking = device_missing or no_room(work, device_bytes_needed(row["restore"]["allocated"]))
    if lacking:
        row["restore_device"] = {"missing": lacking}
        bench_proc.progress(label, f"restore to device skipped: {lacking}")
    else:
        row["restore_device"] = restore_to_device(env, work, size, digest, logs)
        done = row["restore_device"]
        state = done["missing"] if "missing" in done else f"{done['wall']:.2f} s"
        bench_proc.progress(label, f"restore to device {state}")


def restore_to_device(
    env: dict[str, str], work: Path, size: int, digest: bytes, logs: Path
) -> dict[str, Any]:
    """Restore the latest point to a loop device over a sparse file of the disk's size.

    The engine writes a device unlike a file: aligned runs with O_DIRECT, empty blocks
    made holes (see ``device_bytes_needed``) and an fsync before it returns;
    the time includes all of that. Verified by the BLAKE3 of the device's first ``size``
    bytes.
    """
    backing = work / "device.img"
    with open(backing, "wb") as f:
        os.ftruncate(f.fileno(), size)
    attach = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if attach.returncode != 0:  # e.g. a container without /dev/loop-control
        reason = " ".join(attach.stderr.split()) or f"exit code {attach.returncode}"
        return {"missing": f"losetup failed: {reason}"}
    device = Path(attach.stdout.strip())
    try:
        argv = [*vmvault_command(), "restore", "latest", str(device), "--json"]
        os.sync()
        m = bench_proc.run_timed(argv, logs / "restore-device", env=env)
        if m.rc != 0:
            raise SystemExit(f"restore to {device} failed: {m.stderr_tail()}")
        verified = bench_proc.file_digest(device, limit=size) == digest
    finally:
        detach = subprocess.run(["losetup", "-d", str(device)], capture_output=True, check=False)
        if detach.returncode != 0:
            bench_proc.progress("scale", f"losetup -d {device} failed: {detach.stderr!r}")
    # Detached, the loop device has flushed everything to its file: its size on disk is final.
    return _measure(m) | {"verified": verified, "allocated": bench_proc.allocated(backing)}


def _label(row: dict[str, Any]) -> str:
    return f"scale {human_size(row['size'])} {row['share'] * 100:g} % alloc {row['rate']:g} %"


def _measure(m: bench_proc.Measured) -> dict[str, Any]:
    return {"wall": round(m.wall, 3), "cpu": round(m.cpu, 3), "rss": m.maxrss}


HEADER = [
    "disk",
    "allocated",
    "changed",
    "full s",
    "full RSS MiB",
    "incr s",
    "incr RSS MiB",
    "time per allocated GB (full / incr s)",
    "vault growth / changed",
    "restore s",
    "restore RSS MiB",
    "restore to device s",
    "verified",
]


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        lines.append("| " + " | ".join(_cells(r)) + " |")
    return "\n".join(lines) + "\n"


def _cells(r: dict[str, Any]) -> list[str]:
    disk = human_size(r["size"])
    if "skipped" in r:
        cells = [disk, f"{r['share'] * 100:g} %", f"skipped: {r['skipped']}"]
        return cells + ["-"] * (len(HEADER) - len(cells))
    allocated = r["allocated_bytes"]
    per_gb = [
        r[s]["wall"] / max(r[s]["image_allocated"] / GB, 1e-9) for s in ("backup1", "backup2")
    ]
    growth = r["backup2"]["growth"] / max(r["changed_bytes"], 1)
    device = r["restore_device"]
    checks = [("file", r["restore"]["verified"])]
    if "missing" in device:
        device_cell = f"n/a: {device['missing']}"
    else:
        device_cell = f"{device['wall']:.2f}"
        checks.append(("device", device["verified"]))
    failed = [name for name, ok in checks if not ok]
    return [
        disk,
        f"{100 * allocated / r['size']:.0f} % ({allocated / GB:.2f} GB)",
        f"{r['rate']:g} % ({r['changed_bytes'] / 1e6:.0f} MB)",
        f"{r['backup1']['wall']:.2f}",
        f"{r['backup1']['rss'] / 2**20:.0f}",
        f"{r['backup2']['wall']:.2f}",
        f"{r['backup2']['rss'] / 2**20:.0f}",
        f"{per_gb[0]:.2f} / {per_gb[1]:.2f}",
        f"{growth:.2f}",
        f"{r['restore']['wall']:.2f}",
        f"{r['restore']['rss'] / 2**20:.0f}",
        device_cell,
        f"NO ({', '.join(failed)})" if failed else "yes",
    ]


def parse_sparse_rows(text: str) -> list[tuple[int, float]]:
    """``64G:40,128G:20`` -> [(size, share)]; ``none`` -> []."""
    if text.strip().lower() == "none":
        return []
    rows = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        size_text, sep, percent_text = item.partition(":")
        if not sep:
            raise ValueError(f"{item!r} is not SIZE:ALLOCATED_PERCENT, e.g. 64G:40")
        try:
            percent = float(percent_text)
        except ValueError:
            raise ValueError(f"{percent_text!r} in {item!r} is not a percent") from None
        if not 0 < percent <= 100:
            raise ValueError(f"allocated percent in {item!r} must be above 0 and at most 100")
        rows.append((testdisk.parse_size(size_text), percent / 100))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1G,4G,16G")
    ap.add_argument("--rates", default="0.1,1,10")
    ap.add_argument("--rate-size", default="4G")
    ap.add_argument(
        "--sparse-rows",
        default="64G:40",
        help="large sparse disks, SIZE:ALLOCATED_PERCENT[,...], or none (default 64G:40)",
    )
    ap.add_argument("--workdir", type=Path, default=HERE / "work" / "scale")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    try:
        sparse = parse_sparse_rows(args.sparse_rows)
    except ValueError as exc:
        ap.error(f"--sparse-rows: {exc}")
    sizes = [testdisk.parse_size(s) for s in args.sizes.split(",") if s]
    rates = [float(r) for r in args.rates.split(",") if r]
    rate_size = testdisk.parse_size(args.rate_size)
    device_missing = device_support()

    def point(size: int, rate: float, allocated: float | None = None) -> dict[str, Any]:
        return one_series_point(
            args.workdir, size, rate, allocated=allocated, device_missing=device_missing
        )

    by_size = [point(s, 1.0) for s in sizes]
    by_rate = []
    for rate in rates:
        done = [r for r in by_size if r["size"] == rate_size and r["rate"] == rate]
        by_rate.append(done[0] if done else point(rate_size, rate))
    sparse_rows = [point(size, SPARSE_RATE, share) for size, share in sparse]
    report = {
        "date": bench_report.utc_now().isoformat(timespec="seconds"),
        "machine": bench_report.machine_info(),
        "by_size": by_size,
        "by_rate": by_rate,
        "sparse_rows": sparse_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2))
    text = (
        f"## Scaling of vmvault ({report['date']})\n\n"
        + markdown(by_size, "By disk size, 1 % changed")
        + "\n"
        + markdown(by_rate, f"By change rate, {human_size(rate_size)} disk")
    )
    if sparse_rows:
        text += "\n" + markdown(sparse_rows, f"Large sparse disks, {SPARSE_RATE:g} % changed")
    (args.out / "scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
