"""Odd disk sources, absurd rates, signals, cancels and lost workers: one line, no hang,
no lock left behind, and a lost job is retried or alerted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from conftest import PASSPHRASE, run_cli
from vmvault import service, testdisk
from vmvault.alerts.store import list_alerts
from vmvault.catalog.models import Job
from vmvault.inventory import parse_inventory
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.worker import run_worker

CLI = [sys.executable, "-c", "from vmvault.cli.main import run; run()"]


def _env(ctx: service.Context) -> dict[str, str]:
    return {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }


def _locks(ctx: service.Context) -> list[Path]:
    folder = Path(ctx.vault_path) / "locks"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("kind", ["fifo", "chardev", "socket"])
def test_odd_disk_sources_are_one_error_line_at_once(
    tmp_path: Path, ctx: service.Context, kind: str
) -> None:
    if kind == "fifo":
        source = tmp_path / "disk.fifo"
        os.mkfifo(source)
    elif kind == "chardev":
        source = Path("/dev/zero")
    else:
        import socket

        source = tmp_path / "disk.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(source))
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, "backup", str(source), "--vm", "vm"],
        env={**os.environ, **_env(ctx)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - started < 15
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert (len(lines) == 1 and "neither a regular file nor a block device" in lines[0]) or (
        "cannot be opened as a disk" in lines[0]
    )
    assert not _locks(ctx)


@pytest.mark.parametrize("rate", ["-1", "0", "1e-9", "nan"])
def test_absurd_rate_limits_are_one_error_line(
    ctx: service.Context, tmp_path: Path, rate: str
) -> None:
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 4 * testdisk.MiB, seed=1, jobs=1)
    result = run_cli("backup", str(image), "--vm", "vm", "--limit-rate", rate, env=_env(ctx))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--limit-rate" in result.stderr


def test_sigterm_stops_a_throttled_backup_within_seconds_and_frees_the_lock(
    ctx: service.Context, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 32 * testdisk.MiB, seed=1, jobs=1)
    proc = subprocess.Popen(
        [*CLI, "backup", str(image), "--vm", "vm", "--limit-rate", "0.1"],
        env={**os.environ, **_env(ctx)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not _locks(ctx) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _locks(ctx), "the backup never took its lock"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5, "SIGTERM took too long"
    assert proc.returncode == 130
    assert len(stderr.strip().splitlines()) == 1 and "interrupted" in stderr
    assert not _locks(ctx)  # released
    assert ctx.open_vault(load_index=False).point_ids() == []


def test_a_cancelled_throttled_job_ends_within_seconds(
    ctx: service.Context, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 32 * testdisk.MiB, seed=1, jobs=1)
    inventory = parse_inventory(
        f"""
[limits]
disk_mb_per_s = 0.2

[[vms]]
name = "vm"
  [[vms.disks]]
  name = "os"
  path = "{image}"
""",
        "inv.toml",
    )
    queue = JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)
    job_id = queue.enqueue("backup", "vm")
    worker = threading.Thread(target=run_worker, args=(ctx, inventory), kwargs={"poll": 0.05})
    worker.start()
    deadline = time.monotonic() + 30
    while queue.get(job_id).state != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside a throttled block
    assert queue.cancel(job_id) == "cancelling"
    started = time.monotonic()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert queue.get(job_id).state == "cancelled"
    # the worker beats every few seconds: the cancel is seen at its next heartbeat
    assert time.monotonic() - started < 15
    assert not _locks(ctx)


def _lost_job(queue: JobQueue, max_attempts: int) -> int:
    """A job a worker claimed and then died on (its heartbeat stopped long ago)."""
    job_id = queue.enqueue("backup", "vm", max_attempts=max_attempts)
    assert queue.claim("dead-worker", lambda running, candidate: None) is not None
    with queue.catalog.session.begin() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=10))
        )
    return job_id


def test_a_job_of_a_lost_worker_is_retried_then_alerted(ctx: service.Context) -> None:
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id)
    inventory = parse_inventory("", "inv.toml")
    retried = _lost_job(queue, max_attempts=3)
    [(job, outcome)] = queue.reap()
    assert job.id == retried and outcome == "queued"
    assert queue.get(retried).error_code == "worker_lost"
    queue.cancel(retried)

    spent = _lost_job(queue, max_attempts=1)
    run_worker(ctx, inventory, once=True, poll=0.05)  # its loop reaps, then alerts
    assert queue.get(spent).state == "failed"
    _, alerts = list_alerts(ctx.catalog(), vault_id)
    failed = [a for a in alerts if a.kind == "job_failed"]
    assert len(failed) == 1 and failed[0].details["job"] == spent
    assert "stopped answering" in failed[0].message
