"""A fleet's live workers in Redis (started by the tests), and the alert for jobs of a host
no worker serves: from the presence records, and from a real scheduler and worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from support.cli import PASSPHRASE
from vmvault.alerts.store import list_alerts
from vmvault.app.context import Context
from vmvault.cluster.presence import ANY_HOST, HostWatch, WorkerPresence
from vmvault.inventory import InventoryFile
from vmvault.jobs.queue import JobQueue

pytestmark = pytest.mark.redis

CLI = [sys.executable, "-c", "from vmvault.cli.main import run; run()"]
INVENTORY = """
[[vms]]
name = "web"
host = "hv1"
  [[vms.disks]]
  name = "os"
  path = "/nonexistent/web.img"

[[vms]]
name = "db"
host = "hv2"
  [[vms.disks]]
  name = "os"
  path = "/nonexistent/db.img"
"""


def _alerts(ctx: Context, vault_id: str) -> list[tuple[str, str]]:
    _, alerts = list_alerts(ctx.catalog(), vault_id)
    return [(a.kind, a.message) for a in alerts if a.kind == "host_without_worker"]


def test_a_worker_counts_while_it_renews_and_not_after(redis_url: str) -> None:
    presence = WorkerPresence(redis.Redis.from_url(redis_url), "v")
    presence.announce("hv1", "hv1/a:1", ttl=10, now=100)
    presence.announce("hv1", "hv1/a:2", ttl=10, now=105)
    presence.announce("hv2", "hv2/b:1", ttl=10, now=100)
    assert presence.live(now=109) == {"hv1": ["hv1/a:1", "hv1/a:2"], "hv2": ["hv2/b:1"]}
    assert presence.live(now=111) == {"hv1": ["hv1/a:2"]}  # two stopped renewing
    presence.withdraw("hv1", "hv1/a:2")
    assert presence.live(now=111) == {}
    assert WorkerPresence(redis.Redis.from_url(redis_url), "other").live() == {}


def test_jobs_of_a_host_without_a_worker_raise_one_alert(
    ctx: Context, tmp_path: Path, redis_url: str
) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(INVENTORY)
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id)
    presence = WorkerPresence(redis.Redis.from_url(redis_url), vault_id)
    watch = HostWatch(queue, presence, InventoryFile(str(inventory)), after=60)
    start = datetime.now(UTC)
    web = queue.enqueue("backup", "web", now=start)
    db = queue.enqueue("backup", "db", now=start)
    verify = queue.enqueue("verify", "", now=start)
    presence.announce("hv1", "hv1/w:1", ttl=3600)

    assert watch(start + timedelta(seconds=30)) == []  # not waiting long enough yet
    assert watch(start + timedelta(seconds=61)) == ["hv2"]  # hv1's worker takes the rest
    [(_, message)] = _alerts(ctx, vault_id)
    assert message.startswith(f"host hv2 has no worker: 1 job(s) waiting, the oldest (job {db},")
    assert "vmvault worker --host hv2" in message
    assert watch(start + timedelta(seconds=90)) == []  # one alert per episode
    assert len(_alerts(ctx, vault_id)) == 1

    presence.announce("hv2", "hv2/w:1", ttl=3600)
    assert watch(start + timedelta(seconds=120)) == []
    presence.withdraw("hv1", "hv1/w:1")
    presence.withdraw("hv2", "hv2/w:1")
    # No worker at all: the shared queue's job is stranded too, and hv1's; hv2's job was
    # alerted already (one alert per host and stranded job).
    assert watch(start + timedelta(seconds=150)) == [ANY_HOST, "hv1"]
    kinds = {m.split(":")[0] for _, m in _alerts(ctx, vault_id)}
    assert kinds == {"the fleet has no worker", "host hv1 has no worker", "host hv2 has no worker"}
    assert len(_alerts(ctx, vault_id)) == 3
    # A second watcher (a server beside the scheduler) adds nothing.
    other = HostWatch(queue, presence, InventoryFile(str(inventory)), after=60)
    assert other(start + timedelta(seconds=160)) == []
    assert queue.get(web).state == queue.get(verify).state == "queued"  # alerted, not failed


def test_the_scheduler_alerts_on_a_host_whose_worker_is_gone(
    ctx: Context, tmp_path: Path, redis_url: str
) -> None:
    """A real worker announces itself and withdraws when stopped; the real scheduler then
    raises the alert for the job its host's queue holds."""
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(INVENTORY)
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    presence = WorkerPresence(redis.Redis.from_url(redis_url), vault_id)
    env = {
        **os.environ,
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_BROKER": redis_url,
        "VMVAULT_INVENTORY": str(inventory),
        "VMVAULT_HEARTBEAT_SECONDS": "0.5",
        "VMVAULT_NO_WORKER_AFTER_SECONDS": "1",
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([*CLI, "worker", "--host", "hv2"], env=env, stdout=log, stderr=log)
    procs = [worker]
    try:
        deadline = time.monotonic() + 30
        while "hv2" not in presence.live() and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        assert list(presence.live()) == ["hv2"]
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        assert presence.live() == {}  # withdrawn on the way out, not left to expire

        JobQueue(ctx.catalog(), vault_id).enqueue("backup", "db")  # for hv2
        scheduler = subprocess.Popen(
            [*CLI, "scheduler", "--interval", "0.5"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(scheduler)
        deadline = time.monotonic() + 30
        while not _alerts(ctx, vault_id) and time.monotonic() < deadline:
            assert scheduler.poll() is None
            time.sleep(0.3)
        [(_, message)] = _alerts(ctx, vault_id)
        assert message.startswith("host hv2 has no worker: 1 job(s) waiting")
        scheduler.send_signal(signal.SIGTERM)
        _, stderr = scheduler.communicate(timeout=30)
        assert "host hv2 has no worker" in stderr.decode()  # also in the scheduler's log
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()
