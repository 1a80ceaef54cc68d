"""The scheduler: due backups queued per policy, one catch-up after downtime, daily
maintenance (retention + GC) as a job, verifies of the points a policy's ``verify`` makes
due; the worker runs them all."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path

import pytest

from support.damagekit import flip_one_data_chunk
from vmvault.alerts.store import list_alerts
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.catalog.store import Catalog
from vmvault.catalog.verifications import last_verified
from vmvault.errors import NotFound
from vmvault.inventory import parse_inventory
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.scheduler import SchedulerState, tick
from vmvault.jobs.startup import startup_summary
from vmvault.jobs.worker import run_worker


def test_due_jobs_catch_up_once_and_maintenance_runs_daily(tmp_path: Path, ctx: Context) -> None:
    disk = tmp_path / "web.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
        f.write(os.urandom(1 << 20))
    inv = parse_inventory(
        f"""
[policies.nightly]
schedule = {{ kind = "daily", time = "22:30", timezone = "Europe/Berlin" }}

[[vms]]
name = "web"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "{disk}"

[[vms]]
name = "unprotected"
  [[vms.disks]]
  name = "os"
  path = "{disk}"
""",
        "inv.toml",
    )
    queue = JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)
    state = SchedulerState()
    t0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # 22:30 in Berlin is 21:30 UTC in winter
    assert tick(queue, inv, state, t0) == []  # first sight: nothing owed yet
    [maintenance] = tick(queue, inv, state, t0 + timedelta(hours=2, minutes=30))
    assert queue.get(maintenance).kind == "maintenance"  # daily, at 12:00 UTC
    [first] = tick(queue, inv, state, t0 + timedelta(hours=11, minutes=45))
    assert queue.get(first).spec["due"] == "2026-11-20T21:30:00+00:00"
    assert tick(queue, inv, state, t0 + timedelta(hours=12)) == []  # already queued
    later = t0 + timedelta(days=3, hours=1)  # the scheduler was down for three nights
    [catch_up] = tick(queue, inv, state, later)  # one backup, not three
    assert queue.get(catch_up).spec["due"] == "2026-11-22T21:30:00+00:00"
    [maintenance2] = tick(queue, inv, state, later + timedelta(hours=2))
    assert tick(queue, inv, state, later + timedelta(hours=3)) == []  # once a day
    jobs = [maintenance, first, catch_up, maintenance2]
    ran = run_worker(ctx, inv, once=True, poll=0.05)
    assert sorted(ran) == sorted(jobs)
    states = {j: queue.get(j).state for j in ran}
    assert set(states.values()) == {"succeeded"}, [(j, queue.get(j).error_message) for j in ran]
    assert len(ctx.open_vault(load_index=False).point_ids()) == 2


def test_schedulers_sharing_a_catalog_run_one_maintenance_a_day(
    ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    """A CLI scheduler and a server on one catalog: each remembers only its own days, the
    catalog's claim makes the day's maintenance one job."""
    inv = parse_inventory("", "inv.toml")
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    cli, server = SchedulerState(name="cli:1"), SchedulerState(name="server:2")
    noon = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    [maintenance] = tick(JobQueue(ctx.catalog(), vault_id), inv, cli, noon)
    caplog.set_level(logging.INFO, "vmvault.scheduler")
    later = noon + timedelta(minutes=3)
    assert tick(JobQueue(Catalog(ctx.catalog_url), vault_id), inv, server, later) == []
    assert "today's maintenance was already taken on by cli:1" in caplog.text
    # a process starting after that says so, instead of calling today's due
    vault = ctx.open_vault(load_index=False)

    def maintenance_said(at: int) -> str:
        lines = startup_summary(
            ctx.catalog(), ctx.vault_path, vault, inv, now=later,
            maintenance_time=clock_time(at), interval=5,
        )  # fmt: skip
        return lines[-1]

    assert maintenance_said(12).endswith(
        "daily maintenance at 12:00 UTC (today's taken on by cli:1; next 2026-11-21 12:00 UTC)"
    )
    assert maintenance_said(13).endswith("(next 2026-11-20 13:00 UTC)")
    other = JobQueue(ctx.catalog(), "another-vault")  # another vault's day is its own
    assert tick(other, inv, SchedulerState(name="server:2"), later) != []
    next_day = noon + timedelta(days=1, minutes=5)
    [tomorrow] = tick(JobQueue(ctx.catalog(), vault_id), inv, server, next_day)
    assert tick(JobQueue(ctx.catalog(), vault_id), inv, cli, next_day) == []
    kinds = [j.kind for j in ctx.catalog().jobs(vault_id)]
    assert kinds == ["maintenance", "maintenance"] and tomorrow > maintenance


def test_a_vms_own_start_moves_its_scheduled_backup(tmp_path: Path, ctx: Context) -> None:
    from vmvault.inventory import load_inventory, write_starts

    path = tmp_path / "inv.toml"
    path.write_text(
        '[policies.night]\nschedule = { kind = "daily", time = "22:00" }\n'
        + "".join(
            f'[[vms]]\nname = "{name}"\npolicy = "night"\n'
            f'[[vms.disks]]\nname = "os"\npath = "{tmp_path / name}"\n'
            for name in ("early", "late")
        )
    )
    write_starts(path, {"late": "01:30"})  # what `plan --stagger --apply` writes
    inv = load_inventory(path)
    queue = JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)
    state = SchedulerState()
    day = datetime(2026, 11, 20, tzinfo=UTC)
    [maintenance] = tick(queue, inv, state, day + timedelta(hours=12))  # first sight of the VMs
    assert queue.get(maintenance).kind == "maintenance"
    [early] = tick(queue, inv, state, day + timedelta(hours=22))  # the policy's time
    assert queue.get(early).vm == "early"
    assert tick(queue, inv, state, day + timedelta(hours=25, minutes=29)) == []
    [late] = tick(queue, inv, state, day + timedelta(hours=25, minutes=30))
    assert (queue.get(late).vm, queue.get(late).spec["due"]) == (
        "late",
        "2026-11-21T01:30:00+00:00",
    )
    assert tick(queue, inv, state, day + timedelta(hours=36)) != []  # the next day's maintenance
    assert tick(queue, inv, state, day + timedelta(hours=46)) == [early + 3]  # only "early"
    assert queue.get(early + 3).vm == "early"


def test_the_daemon_keeps_scheduling_while_a_job_runs(tmp_path: Path, ctx: Context) -> None:
    """A slow backup runs in the worker's thread while the scheduler's ticks go on: the daily
    maintenance falls due during the backup and is queued then, not after it."""
    import time as clock

    from vmvault.jobs.daemon import Daemon

    disk = tmp_path / "slow.img"
    with open(disk, "wb") as f:
        f.write(os.urandom(5 << 20))  # 5 MB at 1 MB/s: about five seconds of backup
    inv = parse_inventory(
        f'[limits]\ndisk_mb_per_s = 1\n[[vms]]\nname = "slow"\n'
        f'[[vms.disks]]\nname = "os"\npath = "{disk}"\n',
        "inv.toml",
    )
    vault = ctx.open_vault(load_index=False)
    queue = JobQueue(ctx.catalog(), vault.config.vault_id)
    backup = queue.enqueue("backup", "slow", {})
    daemon = Daemon(
        ctx,
        vault,
        queue,
        lambda: inv,
        loops=("scheduler", "worker"),
        tick_seconds=0.1,
        maintenance_time=clock_time.max,  # not due until the backup runs (below)
        worker_poll=0.05,
    )
    daemon.start()
    try:
        deadline = clock.monotonic() + 60
        while queue.get(backup).state == "queued" and clock.monotonic() < deadline:
            clock.sleep(0.05)
        now = datetime.now(UTC)
        if now.time() < clock_time(0, 0, 2):
            clock.sleep(2)  # a time of day just before midnight would be due only tomorrow
        daemon.maintenance_time = (datetime.now(UTC) - timedelta(seconds=1)).time()
        maintenance = None
        while maintenance is None and clock.monotonic() < deadline:
            backup_now = queue.get(backup).state
            with contextlib.suppress(NotFound):  # the next job queued is the maintenance
                maintenance = queue.get(backup + 1)
                backup_then = backup_now
            clock.sleep(0.05)
        assert maintenance is not None, "the scheduler queued no maintenance"
        assert maintenance.kind == "maintenance"
        assert backup_then == "running"  # queued while the backup ran, not after it
        while clock.monotonic() < deadline and {
            queue.get(j).state for j in (backup, maintenance.id)
        } & {"queued", "running"}:
            clock.sleep(0.1)
    finally:
        daemon.stop()
    assert queue.get(backup).state == "succeeded", queue.get(backup).error_message
    assert queue.get(maintenance.id).state == "succeeded", queue.get(maintenance.id).error_message


def test_the_scheduler_says_what_it_watches_logs_jobs_and_stops_cleanly(
    tmp_path: Path, ctx: Context
) -> None:
    """Start-up summary, a line when a job starts and ends, and SIGTERM is a clean exit 0."""
    inventory = tmp_path / "inv.toml"
    inventory.write_text(
        '[policies.nightly]\nschedule = { kind = "daily", time = "22:30" }\n'
        f'[[vms]]\nname = "web"\npolicy = "nightly"\n'
        f'[[vms.disks]]\nname = "os"\npath = "{tmp_path / "web.img"}"\n'
    )
    env = {
        **os.environ,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_INVENTORY": str(inventory),
    }
    command = [sys.executable, "-c", "from vmvault.cli.main import run; run()", "scheduler"]
    args = ["--interval", "1", "--maintenance-at", "00:00"]  # the day's maintenance: now
    log = tmp_path / "scheduler.log"
    with open(log, "w") as out:
        scheduler = subprocess.Popen([*command, *args], env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 60
            while "ended: maintenance" not in log.read_text():
                assert scheduler.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            scheduler.send_signal(signal.SIGTERM)
            assert scheduler.wait(timeout=30) == 0, log.read_text()
        finally:
            scheduler.kill()
    text = log.read_text()
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    assert f"vault {vault_id} at {ctx.vault_path}" in text and "catalog sqlite:///" in text
    assert "VM web: policy nightly, next run " in text and "22:30 UTC" in text
    assert "watching 1 of 1 VM(s) every 1 s" in text
    assert "started: maintenance (attempt 1" in text
    assert "ended: maintenance succeeded after" in text and "gc freed 0 B" in text
    assert "scheduler stopped" in text and "Traceback" not in text


def test_verifies_are_queued_for_due_points_after_backups_one_per_vm(
    tmp_path: Path, ctx: Context
) -> None:

    disk = tmp_path / "web.img"
    with open(disk, "wb") as f:
        f.truncate(2 << 20)
        f.write(os.urandom(256 << 10))
    inv = parse_inventory(
        f"""
[policies.checked]
schedule = {{ kind = "daily", time = "22:30" }}
verify = {{ every_days = 7, sample = "all" }}
[policies.plain]
schedule = {{ kind = "daily", time = "22:30" }}
[[vms]]
name = "web"
policy = "checked"
  [[vms.disks]]
  name = "os"
  path = "{disk}"
[[vms]]
name = "db"
policy = "plain"
  [[vms.disks]]
  name = "os"
  path = "{disk}"
""",
        "inv.toml",
    )
    older = run_backup(ctx, "web", [DiskSpec("os", str(disk))])["id"]
    newer = run_backup(ctx, "web", [DiskSpec("os", str(disk))])["id"]
    run_backup(ctx, "db", [DiskSpec("os", str(disk))])  # its policy verifies nothing
    queue = JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)
    t = datetime.now(UTC) + timedelta(hours=1)

    def verifies(now: datetime) -> list[tuple[str, str]]:
        # A scheduler that sees the VMs first (no backup owed) and did today's maintenance.
        state = SchedulerState(maintenance_done={now.date().isoformat()})
        jobs = [queue.get(j) for j in tick(queue, inv, state, now)]
        assert all(job.kind == "verify" for job in jobs)
        return [(str(job.vm), job.spec["point"]) for job in jobs]

    backup = queue.enqueue("backup", "db", {}, now=t)
    assert verifies(t) == []  # after the backups
    queue.cancel(backup)
    assert verifies(t) == [("web", newer)]  # never verified: the newest first
    assert verifies(t + timedelta(minutes=1)) == []  # one verify per VM at a time
    assert run_worker(ctx, inv, once=True, poll=0.05)
    assert verifies(t + timedelta(minutes=2)) == [("web", older)]
    assert run_worker(ctx, inv, once=True, poll=0.05)
    verified = last_verified(ctx.catalog(), queue.vault_id)
    assert set(verified) == {older, newer} and all(v.ok for v in verified.values())
    assert verifies(t + timedelta(days=3)) == []  # all verified in the last 7 days
    later = t + timedelta(days=8)
    assert verifies(later) == [("web", newer)]  # the longest since its verify
    assert verifies(later + timedelta(minutes=1)) == []
    # A verify that ends without an outcome (here: cancelled) is tried again a day later.
    [job] = [j for j in queue.queued(later) if j.kind == "verify"]
    queue.cancel(job.id)
    assert verifies(later + timedelta(hours=2)) == [("web", older)]
    [job] = [j for j in queue.queued(later + timedelta(hours=2)) if j.kind == "verify"]
    queue.cancel(job.id)
    assert verifies(later + timedelta(hours=26)) == [("web", newer)]
    # The queued verify meets damage: recorded as such, with its job, and an alert raised.
    flip_one_data_chunk(ctx)
    [job_id] = run_worker(ctx, inv, once=True, poll=0.05)
    assert queue.get(job_id).state == "failed"
    damaged = last_verified(ctx.catalog(), queue.vault_id)[newer]
    assert not damaged.ok and damaged.job_id == job_id
    _, alerts = list_alerts(ctx.catalog(), queue.vault_id)
    assert [(a.kind, a.vm) for a in alerts] == [("point_damaged", "web")]
