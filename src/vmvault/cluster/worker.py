"""``vmvault worker --host NAME --broker URL``: a fleet's worker, a Celery worker started
here, consuming its host's queue and the shared one.

Each message names a job. The task asks the fleet's admission gate (Redis) for a lease,
claims the job's row with the queue's conditional update (a job not queued any more, a
duplicate message, is left alone), runs it with the embedded worker's own
``run_claimed_job`` (heartbeats, progress, cancel, retries: the same code), renewing the
lease at each look for a cancel, and releases the lease. Pool budgets are Redis's, shared
by the fleet. A reaper thread requeues the jobs of workers that stopped beating (and so
sends them again), as the embedded worker's loop does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutting_down

from vmvault.app.context import Context
from vmvault.catalog.models import Job
from vmvault.cluster.broker import fleet_queue, make_app
from vmvault.cluster.presence import WorkerPresence
from vmvault.cluster.redis_limits import RedisGate, RedisPoolBudget, connect
from vmvault.cluster.settings import ANY_QUEUE, TASK, FleetSettings, host_queue
from vmvault.engine.budgets import use_pool_budget
from vmvault.engine.progress import SHUTDOWN
from vmvault.errors import NotFound
from vmvault.inventory import Inventory
from vmvault.jobs.admission import JobLoad, job_load, limits_of
from vmvault.jobs.gate import AdmissionGate
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.worker import alert_failure, run_claimed_job
from vmvault.model.jobs import JobKind

log = logging.getLogger("vmvault.cluster")
ADMIT_POLL = 0.5  # seconds between asks (and looks at its row) of a job waiting for its place


@dataclass
class FleetWorker:
    """What this worker's tasks share."""

    ctx: Context
    inventory: Callable[[], Inventory]
    queue: JobQueue
    gate: AdmissionGate
    name: str
    settings: FleetSettings

    def run(self, job_id: int) -> str:
        """One message: the job run here, or why not ("not queued", "not yet", ...)."""
        queue = self.queue
        try:
            job = queue.get(job_id)
        except NotFound:
            return "not queued"  # another vault's, or gone
        if job.state != "queued" or job.cancel_requested:
            return "not queued"  # running elsewhere, finished, cancelled: a no-op
        now = datetime.now(UTC)
        if job.not_before is not None and job.not_before > now:
            queue.send(job, job.not_before - now)  # early (a duplicate): at its time
            return "not yet"
        inventory = self.inventory()
        lease = None
        load = job_load(inventory, job.vm) if job.kind == JobKind.BACKUP else None
        if load is not None:
            lease = f"{job_id}:{uuid.uuid4().hex}"
            try:
                waited = self._wait_for_place(job, lease, load)
            finally:
                self.gate.done_waiting(job_id, lease)
            if waited is not None:
                return waited
        try:
            claimed = queue.claim_id(job_id, self.name)
            if claimed is None:
                return "not queued"
            beat = None
            if lease is not None and load is not None:
                gate, held, taken = self.gate, lease, load

                def beat() -> None:
                    gate.renew(held, taken)

            log.info("job %d (%s %s) runs here", job_id, job.kind, job.vm)
            run_claimed_job(
                self.ctx, inventory, queue, claimed, heartbeat=self.settings.heartbeat, beat=beat
            )
            return "ran"
        finally:
            if lease is not None:
                self.gate.release(lease)

    def _wait_for_place(self, job: Job, lease: str, load: JobLoad) -> str | None:
        """None once admitted (the lease held), else why this message ends here.

        The job waits as queued, as in the embedded worker: the wait is recorded when it
        starts (queue_wait). A cancel or another worker's claim ends the wait, and so does
        another message's task already waiting for the same job (a duplicate)."""
        told = None
        while (why := self.gate.try_admit(lease, load)) is not None:
            if not self.gate.wait_turn(job.id, lease):
                return "waiting elsewhere"
            if why != told:
                log.info("job %d waits: %s", job.id, why)
                told = why
            if SHUTDOWN.is_set():
                self.queue.send(job)  # this message is acknowledged: a new one
                return "stopping"
            time.sleep(ADMIT_POLL)
            current = self.queue.get(job.id)
            if current.state != "queued" or current.cancel_requested:
                return "not queued"
        return None

    def reap_forever(
        self, stop: threading.Event, announce: Callable[[float], None] = lambda ttl: None
    ) -> None:
        """Requeue (and so send again) the jobs of workers that stopped beating; and say,
        as often, that this worker is alive (``announce``, for ``HostWatch``)."""
        every = max(0.2, min(self.settings.heartbeat, self.settings.stale_after / 3))
        while True:
            try:
                announce(3 * every)  # three missed renewals and it no longer counts
            except Exception as exc:
                log.warning("warning: cannot announce this worker (%s); trying again", exc)
            if stop.wait(every):
                return
            try:
                for lost, outcome in self.queue.reap():
                    log.warning("job %d of %s was reaped: %s", lost.id, lost.worker, outcome)
                    if outcome == "failed":
                        alert_failure(
                            self.queue, lost, ("worker_lost", "its worker stopped answering")
                        )
            except Exception as exc:
                log.warning("warning: reaping failed (%s); trying again", exc)


_current: FleetWorker | None = None


def register(app: Celery) -> Any:
    """The one task: run the job a message names, on this process's ``FleetWorker``."""

    @app.task(name=TASK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_job(job_id: int) -> str:
        if _current is None:
            raise RuntimeError("no fleet worker in this process")
        return _current.run(int(job_id))

    return run_job


def run_fleet_worker(
    ctx: Context,
    inventory: Callable[[], Inventory],
    settings: FleetSettings,
    *,
    host: str,
    concurrency: int | None = None,
) -> None:
    """Serve ``host``'s queue and the shared one until stopped (SIGTERM: running jobs hand
    themselves back to the queue, as the embedded worker's do)."""
    global _current
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    app = make_app(settings)
    client = connect(settings.broker)
    client.ping()  # an unreachable broker fails now, in one line
    queue = fleet_queue(ctx.catalog(), vault_id, settings, inventory, app)
    gate = RedisGate(client, vault_id, lambda: limits_of(inventory()), settings.lease)
    name = f"{host}/{socket.gethostname()}:{os.getpid()}"
    _current = FleetWorker(ctx, inventory, queue, gate, name, settings)
    use_pool_budget(RedisPoolBudget(client, vault_id))
    register(app)
    worker_shutting_down.connect(_shutting_down, weak=False)
    stop = threading.Event()
    presence = WorkerPresence(client, vault_id)

    def announce(ttl: float) -> None:
        presence.announce(host, name, ttl)

    reaper = threading.Thread(target=_current.reap_forever, args=(stop, announce), daemon=True)

    def ready(**_: Any) -> None:
        # Announced once Celery consumes and handles SIGTERM itself: a stop that came
        # earlier (the default action, no `finally`) would leave the announcement behind
        # until it expired, a live-looking host with no worker.
        reaper.start()

    worker_ready.connect(ready, weak=False)
    slots = concurrency or limits_of(inventory()).max_vms
    log.info("worker %s: queues %s and %s", name, host_queue(host), ANY_QUEUE)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={slots}",
                f"--queues={host_queue(host)},{ANY_QUEUE}",
                f"--hostname=vmvault-{host}-{os.getpid()}@{socket.gethostname()}",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ]
        )
    finally:
        stop.set()
        worker_ready.disconnect(ready)
        if reaper.is_alive():
            reaper.join(timeout=5)  # its last announce may not land after the withdrawal
        with contextlib.suppress(Exception):  # the broker may be what stopped us
            presence.withdraw(host, name)
        use_pool_budget(None)
        _current = None


def _shutting_down(**_: Any) -> None:
    SHUTDOWN.set()  # running jobs stop at their next block or wait and are queued again
