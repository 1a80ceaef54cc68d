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

from support.cli import PASSPHRASE, run_cli
from vmvault import testdisk
from vmvault.alerts.store import list_alerts
from vmvault.app.context import Context
from vmvault.app.restore import run_restore
from vmvault.catalog.models import Job
from vmvault.inventory import parse_inventory
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.worker import run_worker

CLI = [sys.executable, "-c", "from vmvault.cli.main import run; run()"]


def _env(ctx: Context) -> dict[str, str]:
    return {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }


def _locks(ctx: Context) -> list[Path]:
    folder = Path(ctx.vault_path) / "locks"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("kind", ["fifo", "chardev", "socket", "directory"])
def test_odd_disk_sources_are_one_error_line_at_once(
    tmp_path: Path, ctx: Context, kind: str
) -> None:
    if kind == "fifo":
        source = tmp_path / "disk.fifo"
        os.mkfifo(source)
    elif kind == "chardev":
        source = Path("/dev/zero")
    elif kind == "directory":
        source = tmp_path / "folder"
        source.mkdir()
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
    assert result.returncode == (1 if kind == "directory" else 2), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert any(
        why in lines[0]
        for why in ("neither a regular file nor a block device", "cannot be opened as a disk")
    ) or (kind == "directory" and "is a directory" in lines[0])
    assert not _locks(ctx)


@pytest.mark.parametrize("rate", ["-1", "0", "1e-9", "nan"])
def test_absurd_rate_limits_are_one_error_line(ctx: Context, tmp_path: Path, rate: str) -> None:
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 4 * testdisk.MiB, seed=1, jobs=1)
    result = run_cli("backup", str(image), "--vm", "vm", "--limit-rate", rate, env=_env(ctx))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--limit-rate" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_throttled_backup_within_seconds_and_frees_the_lock(
    ctx: Context, tmp_path: Path, signum: signal.Signals
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
    proc.send_signal(signum)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5, f"{signum.name} took too long"
    assert proc.returncode == 130
    assert len(stderr.strip().splitlines()) == 1 and "interrupted" in stderr
    assert not _locks(ctx)  # released
    assert ctx.open_vault(load_index=False).point_ids() == []


def test_a_cancelled_throttled_job_ends_within_seconds(ctx: Context, tmp_path: Path) -> None:
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
    # the worker looks for a cancel every second, whatever the job waits on
    assert time.monotonic() - started < 5
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


def test_a_job_of_a_lost_worker_is_retried_then_alerted(ctx: Context) -> None:
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


def _inventory_file(tmp_path: Path, image: Path, mb_per_s: float | None) -> Path:
    limits = f"[limits]\ndisk_mb_per_s = {mb_per_s}\n\n" if mb_per_s else ""
    path = tmp_path / "inventory.toml"
    path.write_text(
        f'{limits}[[vms]]\nname = "vm"\n  [[vms.disks]]\n  name = "os"\n  path = "{image}"\n'
    )
    return path


def _worker(ctx: Context, inventory: Path) -> subprocess.Popen[str]:
    """A real `vmvault worker --once` process."""
    return subprocess.Popen(
        [*CLI, "worker", "--once", "--inventory", str(inventory)],
        env={**os.environ, **_env(ctx)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_mid_backup(ctx: Context, queue: JobQueue, job_id: int, inventory: Path) -> None:
    """Start a real worker on the (throttled) job and SIGKILL it once blocks are flowing."""
    proc = _worker(ctx, inventory)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = queue.get(job_id)
        done = sum(d.get("done", 0) for d in (job.progress or {}).values())
        total = sum(d.get("total", 0) for d in (job.progress or {}).values())
        if job.state == "running" and 0 < done < total:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    else:
        raise AssertionError("the worker never got going")
    proc.kill()
    proc.wait(timeout=10)
    assert queue.get(job_id).state == "running"  # nobody is left to say otherwise


def _time_passes(queue: JobQueue, job_id: int, **columns: datetime) -> None:
    """What the catalog would hold minutes later (a heartbeat gone stale, a backoff over)."""
    with queue.catalog.session.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**columns))


def test_a_sigkilled_worker_s_backup_is_retried_and_the_lost_attempt_stays_visible(
    ctx: Context, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 8 * testdisk.MiB, seed=3, jobs=1)
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id)
    job_id = queue.enqueue("backup", "vm")  # the default: 3 attempts
    _kill_mid_backup(ctx, queue, job_id, _inventory_file(tmp_path, image, 0.2))

    # The workers after it run in this process (the real `vmvault worker` is the killed
    # one, and the two reapers of the next test).
    # A new worker within two minutes leaves the job alone: its worker may only be slow.
    unthrottled = parse_inventory(_inventory_file(tmp_path, image, None).read_text(), "inv.toml")
    run_worker(ctx, unthrottled, once=True, poll=0.05)
    assert queue.get(job_id).state == "running"

    long_ago = datetime.now(UTC) - timedelta(minutes=3)
    _time_passes(queue, job_id, heartbeat_at=long_ago)
    run_worker(ctx, unthrottled, once=True, poll=0.05)  # reaps it: queued again, after a backoff
    job = queue.get(job_id)
    assert (job.state, job.error_code, job.attempts) == ("queued", "worker_lost", 1)
    assert job.not_before is not None and job.not_before > datetime.now(UTC)

    _time_passes(queue, job_id, not_before=long_ago)
    run_worker(ctx, unthrottled, once=True, poll=0.05)
    job = queue.get(job_id)
    assert (job.state, job.attempts) == ("succeeded", 2)
    assert job.error_code == "worker_lost"  # what happened to the first attempt
    assert ctx.open_vault(load_index=False).point_ids() == [job.point_id]
    target = tmp_path / "restored.img"
    run_restore(ctx, str(job.point_id), str(target))
    assert target.read_bytes() == image.read_bytes()
    _, alerts = list_alerts(ctx.catalog(), vault_id)
    assert [a for a in alerts if a.kind == "job_failed"] == []


def test_a_sigkilled_worker_s_last_attempt_fails_with_one_alert(
    ctx: Context, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 8 * testdisk.MiB, seed=3, jobs=1)
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id)
    job_id = queue.enqueue("backup", "vm", max_attempts=1)
    inventory = _inventory_file(tmp_path, image, 0.2)
    _kill_mid_backup(ctx, queue, job_id, inventory)
    _time_passes(queue, job_id, heartbeat_at=datetime.now(UTC) - timedelta(minutes=3))

    # Two reapers at once (a worker and a server, say) must fail it, and alert, once.
    reapers = [_worker(ctx, inventory) for _ in range(2)]
    for proc in reapers:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    job = queue.get(job_id)
    assert (job.state, job.error_code) == ("failed", "worker_lost")
    _, alerts = list_alerts(ctx.catalog(), vault_id)
    failed = [a for a in alerts if a.kind == "job_failed"]
    assert len(failed) == 1 and failed[0].details == {"job": job_id, "code": "worker_lost"}
    assert failed[0].vm == "vm" and "stopped answering" in failed[0].message
    shown = run_cli("alerts", "list", "--json", env=_env(ctx))
    assert shown.returncode == 0 and "job_failed" in shown.stdout, shown.stderr


def test_a_worker_whose_job_was_reaped_drops_it_and_keeps_the_reaper_s_decision(
    ctx: Context, tmp_path: Path
) -> None:
    """Its heartbeat could not land for minutes (a catalog outage, a stopped process):
    the job was reaped and queued again, so this worker must stop running it, and must
    not record an outcome over the retry's."""
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 8 * testdisk.MiB, seed=1, jobs=1)
    inventory = parse_inventory(_inventory_file(tmp_path, image, 0.2).read_text(), "inv.toml")
    queue = JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)
    job_id = queue.enqueue("backup", "vm")
    worker = threading.Thread(target=run_worker, args=(ctx, inventory), kwargs={"poll": 0.05})
    worker.start()
    deadline = time.monotonic() + 30
    while queue.get(job_id).state != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    [(_, outcome)] = queue.reap(stale_after=timedelta(0))  # as a reaper would see it
    assert outcome == "queued"
    started = time.monotonic()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    job = queue.get(job_id)
    assert (job.state, job.error_code, job.worker) == ("queued", "worker_lost", None)
    assert ctx.open_vault(load_index=False).point_ids() == []
    assert not _locks(ctx)


def test_a_worker_stopped_by_sigterm_mid_backup_hands_its_job_back(
    ctx: Context, tmp_path: Path
) -> None:
    """`systemctl stop` of a worker: it ends within seconds, its lock released, and the
    job is queued again (an attempt used, no alert), not failed nor left running."""
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 8 * testdisk.MiB, seed=3, jobs=1)
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id)
    job_id = queue.enqueue("backup", "vm")
    proc = _worker(ctx, _inventory_file(tmp_path, image, 0.2))
    deadline = time.monotonic() + 60
    while queue.get(job_id).state != "running" or not _locks(ctx):
        assert time.monotonic() < deadline and proc.poll() is None, "the job never started"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    job = queue.get(job_id)
    assert (job.state, job.error_code, job.attempts) == ("queued", "interrupted", 1)
    assert not _locks(ctx)
    assert list_alerts(ctx.catalog(), vault_id)[0] == 0


def test_a_fifo_disk_fails_its_queued_job_at_once(ctx: Context, tmp_path: Path) -> None:
    """The worker used to block in open() for ever, its heartbeat keeping the job alive."""
    fifo = tmp_path / "disk.fifo"
    os.mkfifo(fifo)
    queue = JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)
    job_id = queue.enqueue("backup", "vm", max_attempts=1)
    proc = _worker(ctx, _inventory_file(tmp_path, fifo, None))
    try:
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    job = queue.get(job_id)
    assert job.state == "failed" and "a FIFO" in str(job.error_message)
    assert not _locks(ctx)


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("[limits]\ndisk_mb_per_s = 1e-9", id="disk_mb_per_s"),
        pytest.param("[pools.p]\negress_mb_per_s = 0.0001", id="egress_mb_per_s"),
    ],
)
def test_absurd_inventory_rates_are_one_error_line(
    ctx: Context, tmp_path: Path, limit: str
) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(limit + "\n")
    result = run_cli("worker", "--once", "--inventory", str(inventory), env=_env(ctx))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "greater than or equal to 0.1" in lines[0], result.stderr


def test_a_lost_job_whose_cancel_was_asked_for_is_cancelled_without_an_alert(
    ctx: Context,
) -> None:
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id)
    job_id = _lost_job(queue, max_attempts=1)
    assert queue.cancel(job_id) == "cancelling"  # asked, but its worker was gone
    run_worker(ctx, parse_inventory("", "inv.toml"), once=True, poll=0.05)
    job = queue.get(job_id)
    assert (job.state, job.error_code) == ("cancelled", "worker_lost")
    assert list_alerts(ctx.catalog(), vault_id)[0] == 0
