"""The job queue and worker: queue wait, admission caps, cancel, a killed worker, and what
restore and verify jobs read (live and finished)."""

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
from typing import Any

from sqlalchemy import update

from support.cli import PASSPHRASE, run_cli
from vmvault.app.context import Context
from vmvault.app.vm_backup import run_vm_backup
from vmvault.catalog.models import Job
from vmvault.inventory import Inventory, parse_inventory
from vmvault.jobs.queue import JobQueue, job_doc
from vmvault.jobs.worker import run_claimed_job, run_worker

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


class _WatchedQueue(JobQueue):
    """The queue a job reports to, keeping the job's document (as `jobs show` and the
    dashboard read it) after every progress write: what they show while it runs."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)
        self.seen: list[dict[str, Any]] = []

    def report_progress(self, job_id: int, progress: dict[str, Any]) -> None:
        super().report_progress(job_id, progress)
        self.seen.append(job_doc(self.get(job_id)))


def _run_queued(
    ctx: Context, inv: Inventory, kind: str, spec: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One job queued and run by a worker: its documents while it ran, and at its end."""
    queue = _WatchedQueue(ctx)
    job = queue.claim_id(queue.enqueue(kind, "vm0", spec, max_attempts=1), "hv1:1")
    assert job is not None
    run_claimed_job(ctx, inv, queue, job)
    return queue.seen, job_doc(queue.get(job.id))


def test_restore_and_verify_jobs_record_what_they_read_live_and_finished(
    tmp_path: Path, ctx: Context
) -> None:
    disk = tmp_path / "vm0.img"
    with open(disk, "wb") as f:  # two restore tasks' worth (16 MiB each), data in both
        f.write(os.urandom(20 * MiB))
        f.truncate(24 * MiB)
    inv_path = tmp_path / "inv.toml"
    inv_path.write_text(f'[[vms]]\nname = "vm0"\n[[vms.disks]]\nname = "os"\npath = "{disk}"\n')
    inv = parse_inventory(inv_path.read_text(), str(inv_path))
    point = run_vm_backup(ctx, inv, "vm0")["id"]
    copy = {"point": point, "new_name": "vm0-copy", "directory": str(tmp_path / "copy")}
    jobs = {
        "restore": _run_queued(ctx, inv, "restore", copy),
        "in place": _run_queued(ctx, inv, "restore", {"point": point, "in_place": True}),
        "verify": _run_queued(ctx, inv, "verify", {"point": point}),
    }
    for what, (seen, done) in jobs.items():
        assert done["state"] == "succeeded", (what, done)
        verified = [d["bytes_verified"] for d in done["details"]["disks"]]
        # finished: what it read from the vault is what it verified, at a rate
        assert done["bytes_read"] == sum(verified) == 20 * MiB, what
        assert done["live"]["read"] == 20 * MiB and done["live"]["rate"] > 0, what
        # while it ran: what it read so far, its rate and (halfway) the time left
        restoring = [d for d in seen if d["progress"]["os"]["operation"] in ("restore", "verify")]
        assert restoring and all(d["state"] == "running" for d in restoring), what
        live = [d["live"] for d in restoring]
        assert all(0 < f["read"] <= 20 * MiB and f["rate"] > 0 and f["elapsed"] > 0 for f in live)
        if what != "in place":  # its first restore write may fall within 0.5 s of the
            # safety backup's last: the first of a job always lands, halfway through here
            assert live[0]["read"] == 16 * MiB and live[0]["eta"] is not None, what
        assert live[-1]["read"] == 20 * MiB, what
    env = {
        **os.environ,
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "COLUMNS": "100",
    }
    listed = run_cli("jobs", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {
        int(row.split()[0]): row
        for row in listed.stdout.splitlines()
        if row[:5].strip()[:1].isdigit()
    }
    for _, done in jobs.values():  # before: "0 B" read for a restore or a verify
        assert f" {done['kind']} " in rows[done["id"]] and " 20.0 MiB " in rows[done["id"]]
    shown = run_cli("jobs", "show", str(jobs["verify"][1]["id"]), env=env)
    assert "  read       20.0 MiB, " in shown.stdout and "MiB/s" in shown.stdout
    assert "bytes_verified 20.0 MiB" in shown.stdout
    nothing = run_cli("jobs", "list", "--vm", "nosuch", "--state", "failed", env=env)
    assert nothing.returncode == 0 and nothing.stdout == "no jobs (state failed, vm nosuch)\n"
    as_json = run_cli("jobs", "list", "--vm", "nosuch", "--json", env=env)
    assert json.loads(as_json.stdout) == {"jobs": []}
