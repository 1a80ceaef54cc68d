"""A fleet of real processes for the tests: `vmvault worker --host` (and `vmvault scheduler`)
started with a broker, an inventory written as text, test images, and the most jobs that
ran at one time by their own timestamps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import redis

from support.cli import PASSPHRASE
from vmvault import testdisk
from vmvault.app.context import Context
from vmvault.catalog.models import Job
from vmvault.cluster.broker import fleet_queue
from vmvault.cluster.presence import WorkerPresence
from vmvault.cluster.settings import FleetSettings
from vmvault.inventory import InventoryFile
from vmvault.model.jobs import FINAL_STATES

CLI = [sys.executable, "-c", "from vmvault.cli.main import run; run()"]
# Short timings, so that a lost worker's job comes back within seconds.
TIMINGS = {
    "VMVAULT_HEARTBEAT_SECONDS": "0.5",
    "VMVAULT_STALE_AFTER_SECONDS": "4",
    "VMVAULT_RETRY_BACKOFF_SECONDS": "0.5",
    "VMVAULT_LEASE_SECONDS": "3",
    "VMVAULT_VISIBILITY_TIMEOUT": "10",
}


def fleet_env(
    ctx: Context, broker: str, inventory: Path, timings: dict[str, str] | None = None
) -> dict[str, str]:
    return {
        **(TIMINGS if timings is None else timings),
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_BROKER": broker,
        "VMVAULT_INVENTORY": str(inventory),
    }


class Fleet:
    """`vmvault worker --host` processes (and a scheduler) of one test, stopped at its end."""

    def __init__(
        self,
        ctx: Context,
        broker: str,
        inventory: Path,
        logs: Path,
        timings: dict[str, str] | None = None,
    ) -> None:
        self.ctx, self.broker, self.inventory, self.logs = ctx, broker, inventory, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = fleet_env(ctx, broker, inventory, timings)
        self.settings = FleetSettings.from_env(broker)
        self.vault_id = ctx.open_vault(load_index=False).config.vault_id
        self.queue = fleet_queue(
            ctx.catalog(), self.vault_id, self.settings, InventoryFile(str(inventory))
        )

    def spawn(self, label: str, *args: str) -> subprocess.Popen[bytes]:
        """A `vmvault` process with the fleet's environment, its output in ``label``'s log."""
        log = open(self.logs / f"{len(self.procs)}-{label}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [*CLI, *args], env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def worker(self, host: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.spawn(f"worker-{host}", "worker", "--host", host, *extra)

    def ready(self, *hosts: str, timeout: float = 60.0) -> None:
        """Wait until a worker of each of ``hosts`` consumes (it announces itself then): a
        test of workers reading at once must not enqueue while one is still starting."""
        presence = WorkerPresence(redis.Redis.from_url(self.broker), self.vault_id)
        deadline = time.monotonic() + timeout
        while not set(hosts) <= set(presence.live()):
            if time.monotonic() > deadline:
                raise AssertionError(f"workers of {hosts} not ready in {timeout} s\n{self.log()}")
            time.sleep(0.2)

    def scheduler(self, *extra: str) -> subprocess.Popen[bytes]:
        return self.spawn("scheduler", "scheduler", "--broker", self.broker, *extra)

    def log(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.logs.glob("*.log")))

    def wait(self, job_ids: list[int], timeout: float = 60.0) -> list[Job]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = [self.queue.get(j) for j in job_ids]
            if all(j.state in FINAL_STATES for j in jobs):
                return jobs
            time.sleep(0.2)
        states = {j: self.queue.get(j).state for j in job_ids}
        raise AssertionError(f"jobs not done in {timeout} s: {states}\n{self.log()}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3  # a warm shutdown; then no more waiting
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def vm_entry(
    name: str, host: str, disks: Sequence[tuple[str, Path, str | None]], extra: str = ""
) -> str:
    """A ``[[vms]]`` table of the inventory; ``extra`` adds lines of the VM's own."""
    text = f'[[vms]]\nname = "{name}"\nhost = "{host}"\n{extra}'
    for disk, path, pool in disks:
        text += f'  [[vms.disks]]\n  name = "{disk}"\n  path = "{path}"\n'
        if pool:
            text += f'  pool = "{pool}"\n'
    return text


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def disk_image(directory: Path, name: str, mib: int, seed: int) -> Path:
    path = directory / f"{name}.img"
    testdisk.create_disk(path, mib * testdisk.MiB, seed=seed, jobs=1)
    return path


def peak_overlap(jobs: list[Job], key: Callable[[Job], int] = lambda j: 1) -> int:
    """The most of ``key`` over jobs running at one time (from their own timestamps)."""
    events: list[tuple[datetime, int]] = []
    for job in jobs:
        assert job.started_at is not None and job.finished_at is not None
        events += [(job.started_at, key(job)), (job.finished_at, -key(job))]
    peak = now = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts
        now += delta
        peak = max(peak, now)
    return peak
