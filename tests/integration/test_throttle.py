"""Admission control (pure) and the rate caps, measured on real backups with a generous
tolerance: the caps must bind, not be met to the millisecond."""

from __future__ import annotations

import os
import time
from pathlib import Path

from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore
from vmvault.disks.source import RawDisk
from vmvault.engine.backup import DiskInput, backup
from vmvault.engine.budgets import disk_budget
from vmvault.jobs.admission import JobLoad, Limits, admit

MB = 1_000_000
BURST = 4 * 1024 * 1024  # what a bucket lets through before it starts pacing


def _disks(tmp_path: Path, count: int, size: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = tmp_path / f"d{i}.img"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def _timed_backup(ctx: Context, paths: list[Path], budgets: list) -> float:
    vault = ctx.open_vault()
    sources = [RawDisk.open(p) for p in paths]
    try:
        inputs = [
            DiskInput(
                p.stem,
                s,
                byte_buckets=b.byte_buckets,
                request_buckets=b.request_buckets,
                slot=b.slot,
            )
            for p, s, b in zip(paths, sources, budgets, strict=True)
        ]
        started = time.monotonic()
        backup(vault, "vm", inputs, workers=2)
        return time.monotonic() - started
    finally:
        for s in sources:
            s.close()


def test_four_disks_at_a_per_disk_cap(tmp_path: Path, ctx: Context) -> None:
    paths = _disks(tmp_path, 4, 16 * MB)
    elapsed = _timed_backup(ctx, paths, [disk_budget(10.0) for _ in paths])
    expected = (16 * MB - BURST) / (10 * MB)  # the disks run side by side, each capped
    assert 0.7 * expected <= elapsed <= 2.5 * expected + 1, (elapsed, expected)


def test_a_pool_budget_is_shared_by_its_disks(tmp_path: Path, ctx: Context) -> None:
    paths = _disks(tmp_path, 4, 10 * MB)
    budgets = [
        disk_budget(
            None, "pool-t1", egress_mb_per_s=20.0, requests_per_second=1000, disks_in_flight=20
        )
        for _ in paths
    ]
    elapsed = _timed_backup(ctx, paths, budgets)
    expected = (40 * MB - BURST) / (20 * MB)  # four disks, one 20 MB/s pool
    assert 0.7 * expected <= elapsed <= 2.5 * expected + 1, (elapsed, expected)


def test_disks_in_flight_per_pool(tmp_path: Path, ctx: Context) -> None:
    paths = _disks(tmp_path, 4, 12 * MB)
    budgets = [
        disk_budget(
            10.0, "pool-t2", egress_mb_per_s=1000.0, requests_per_second=1000, disks_in_flight=2
        )
        for _ in paths
    ]
    elapsed = _timed_backup(ctx, paths, budgets)
    one_wave = (12 * MB - BURST) / (10 * MB)
    assert elapsed >= 1.6 * one_wave, (elapsed, one_wave)  # two waves of two disks


def test_admission_rules() -> None:
    limits = Limits(max_vms=40, max_disks_per_pool=20)
    running = [JobLoad(f"vm{i}", {"p1": 1}) for i in range(39)]
    assert admit(running, JobLoad("new", {"p2": 1}), limits) is None
    assert "40 VMs" in (
        admit([*running, JobLoad("x", {"p2": 1})], JobLoad("new", {"p2": 1}), limits) or ""
    )
    busy_pool = [JobLoad("a", {"p1": 18})]
    assert "pool p1" in (admit(busy_pool, JobLoad("b", {"p1": 4}), limits) or "")
    assert admit(busy_pool, JobLoad("b", {"p1": 2}), limits) is None
    assert admit([], JobLoad("huge", {"p1": 32}), limits) is None  # alone on an idle pool
    assert "already running" in (admit([JobLoad("a", {})], JobLoad("a", {}), limits) or "")
    capped = Limits(pool_disk_caps={"p3": 2})
    assert admit([JobLoad("a", {"p3": 2})], JobLoad("b", {"p3": 1}), capped) is not None


def test_fifty_queued_vms_never_exceed_forty_at_once() -> None:
    """The admission loop the scheduler runs, over 50 queued VM jobs of varied lengths."""
    limits = Limits(max_vms=40)
    queue = [JobLoad(f"vm{i:02d}", {f"pool{i % 5}": 1 + i % 3}) for i in range(50)]
    lengths = {job.vm: 1 + (i * 7) % 5 for i, job in enumerate(queue)}
    running: dict[str, tuple[JobLoad, int]] = {}
    peak, tick, done = 0, 0, 0
    while queue or running:
        for job in list(queue):
            if admit([j for j, _ in running.values()], job, limits) is None:
                running[job.vm] = (job, tick + lengths[job.vm])
                queue.remove(job)
        peak = max(peak, len(running))
        tick += 1
        for vm, (_, end) in list(running.items()):
            if end <= tick:
                del running[vm]
                done += 1
    assert peak == 40 and done == 50


def test_a_restore_takes_its_share_of_the_pool(tmp_path: Path, ctx: Context) -> None:
    """Restores draw on the same pool bucket as backups: a restore into a 10 MB/s pool of
    20 MB of data takes about 2 s."""
    [path] = _disks(tmp_path, 1, 20 * MB)
    point = run_backup(ctx, "vm", [DiskSpec("d", str(path))])
    budget = disk_budget(
        None, "pool-t3", egress_mb_per_s=10.0, requests_per_second=1000, disks_in_flight=20
    )
    started = time.monotonic()
    run_restore(ctx, point["id"], str(tmp_path / "out.img"), budget=budget)
    elapsed = time.monotonic() - started
    expected = (20 * MB - BURST) / (10 * MB)
    assert 0.7 * expected <= elapsed <= 2.5 * expected + 1, (elapsed, expected)
