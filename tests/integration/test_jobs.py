"""The job queue and worker: queue wait, admission caps, cancel, and a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from support.cli import PASSPHRASE, run_cli
from vmvault.app.context import Context
from vmvault.catalog.models import Job
from vmvault.inventory import Inventory, parse_inventory
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.worker import run_worker

MiB = 1 << 20


def _inventory(tmp_path: Path, vms: int, *, disk_mb_per_s: float = 60, max_vms: int = 40) -> str:
    lines = [
        f"[limits]\ndisk_mb_per_s = {disk_mb_per_s}\nmax_vms = {max_vms}\n",
        "[pools.p1]\nmax_disks_in_flight = 20\n",
    ]
    for i in range(vms):
        disk = tmp_path / f"vm{i}.img"
        with open(disk, "wb") as f:
            f.truncate(8 * MiB)
            f.write(os.urandom(3 * MiB))
        lines.append(
            f'[[vms]]\nname = "vm{i}"\n[[vms.disks]]\nname = "os"\npath = "{disk}"\npool = "p1"\n'
        )
    return "\n".join(lines)


def _queue(ctx: Context) -> JobQueue:
    return JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)


def _run_watching(ctx: Context, inv: Inventory, queue: JobQueue) -> tuple[list[int], int]:
    """Run the queue once; return the jobs started and the most ever running together."""
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(queue.running()))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        started = run_worker(ctx, inv, once=True, poll=0.05)
    finally:
        stop.set()
        watcher.join()
    return started, peak


def test_worker_runs_queued_jobs_within_the_vm_cap(tmp_path: Path, ctx: Context) -> None:
    inv = parse_inventory(_inventory(tmp_path, 5, disk_mb_per_s=3, max_vms=2), "inv.toml")
    queue = _queue(ctx)
    ids = [queue.enqueue("backup", f"vm{i}") for i in range(5)]
    cancelled = queue.enqueue("backup", "vm0")
    assert queue.cancel(cancelled) == "cancelled"
    started, peak = _run_watching(ctx, inv, queue)
    assert sorted(started) == ids
    assert 1 <= peak <= 2  # never more than max_vms at once
    jobs = {j.id: j for j in ctx.catalog().jobs(queue.vault_id, 20)}
    assert all(jobs[i].state == "succeeded" and jobs[i].point_id for i in ids)
    assert max(jobs[i].queue_wait for i in ids) > 0.5  # the later ones waited for a place
    assert jobs[cancelled].state == "cancelled"
    assert len(ctx.open_vault(load_index=False).point_ids()) == 5


def test_a_killed_worker_leaves_a_failed_rerunnable_job(tmp_path: Path, ctx: Context) -> None:
    inv_path = tmp_path / "inv.toml"
    inv_path.write_text(_inventory(tmp_path, 1, disk_mb_per_s=0.5))
    with open(tmp_path / "vm0.img", "r+b") as f:  # more than the 4 MiB a bucket lets through
        f.write(os.urandom(7 * MiB))
    env = {
        **os.environ,
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_INVENTORY": str(inv_path),
    }
    queued = run_cli("jobs", "run-now", "vm0", "--json", env=env)
    assert queued.returncode == 0, queued.stderr
    queue = _queue(ctx)
    worker = subprocess.Popen(
        [sys.executable, "-c", "from vmvault.cli.main import run; run()", "worker", "--once"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not queue.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue.running(), "the worker never started the job"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    [stuck] = queue.running()
    assert queue.reap(stale_after=timedelta(hours=1)) == []  # its heartbeat is still fresh
    [(reaped, outcome)] = queue.reap(stale_after=timedelta(seconds=0))
    assert reaped.id == stuck.id and outcome == "queued"  # a lost worker is transient
    retried = queue.get(stuck.id)
    assert retried.state == "queued" and retried.error_code == "worker_lost"
    assert ctx.open_vault(load_index=False).point_ids() == []  # no half point
    shown = run_cli("jobs", "show", str(stuck.id), "--json", env=env)
    assert '"worker_lost"' in shown.stdout
    inv = parse_inventory(inv_path.read_text().replace("0.5", "100"), "inv.toml")
    with queue.catalog.session.begin() as s:  # skip the backoff
        s.execute(update(Job).where(Job.id == stuck.id).values(not_before=None))
    assert run_worker(ctx, inv, once=True, poll=0.05) == [stuck.id]
    assert queue.get(stuck.id).state == "succeeded"
    listed = run_cli("jobs", "list", "--json", env=env)
    assert listed.returncode == 0
    states = [j["state"] for j in json.loads(listed.stdout)["jobs"]]
    assert states == ["succeeded"]
    unknown = run_cli("jobs", "run-now", "nope", env=env)
    assert unknown.returncode == 2 and "no VM named 'nope'" in unknown.stderr


def test_fifty_queued_vm_jobs_never_run_more_than_forty_at_once(
    tmp_path: Path, ctx: Context
) -> None:
    lines = ["[limits]\ndisk_mb_per_s = 1\nmax_vms = 40\n"]
    for i in range(50):
        disk = tmp_path / f"vm{i}.img"
        disk.write_bytes(os.urandom(7 << 20))  # beyond the 4 MiB burst: each job lasts ~3 s
        lines.append(f'[[vms]]\nname = "vm{i}"\n[[vms.disks]]\nname = "os"\npath = "{disk}"\n')
    inv = parse_inventory("\n".join(lines), "inv.toml")
    queue = _queue(ctx)
    ids = [queue.enqueue("backup", f"vm{i}") for i in range(50)]
    started, peak = _run_watching(ctx, inv, queue)
    assert sorted(started) == ids
    assert 20 <= peak <= 40, peak  # they did run side by side, never more than the cap
    states = {queue.get(i).state for i in ids}
    assert states == {"succeeded"}, [(i, queue.get(i).error_message) for i in ids][:3]
