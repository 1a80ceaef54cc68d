"""Running queued jobs: admission from the inventory's limits, heartbeats, cancel, retries."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from vmvault.alerts.store import raise_alert
from vmvault.app.context import Context
from vmvault.catalog.models import Job
from vmvault.engine.progress import SHUTDOWN, ProgressEvent
from vmvault.errors import VmvaultError
from vmvault.inventory import Inventory
from vmvault.jobs.admission import admit, job_load, limits_of
from vmvault.jobs.handlers import JobRun, abandoned, run_job
from vmvault.jobs.queue import JobQueue
from vmvault.model.jobs import JobKind, JobState
from vmvault.units import human_duration

# Seconds a stopping worker waits for its jobs to hand themselves back (they give up any
# wait within a fraction of a second); one still busy after that is reaped later.
STOP_GRACE = 10.0
HEARTBEAT = 10.0
# Seconds between looks for a cancel: a cancelled job ends within about this long, whatever
# it waits on (a throttled read, its pool's turn); a read of one row, cheap enough.
CANCEL_POLL = 1.0
PROGRESS_EVERY = 0.5  # seconds between progress writes to the catalog
log = logging.getLogger("vmvault")


class Cancelled(VmvaultError):
    code = "cancelled"


def run_worker(
    ctx: Context,
    inventory: Inventory,
    *,
    name: str | None = None,
    concurrency: int | None = None,
    once: bool = True,
    poll: float = 0.5,
    stop: threading.Event | None = None,
) -> list[int]:
    """Run queued jobs, as many at once as admission allows; returns the ids started.

    With ``once`` the worker stops when nothing is queued or running; otherwise it serves
    the queue until interrupted. Once ``stop`` is set (or the process is shutting down) it
    claims nothing more and returns when its running jobs have ended.
    """
    name = name or f"{socket.gethostname()}:{os.getpid()}"
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id)
    limits = limits_of(inventory)
    slots = concurrency or limits.max_vms

    def blocked(running: list[Job], candidate: Job) -> str | None:
        loads = [job_load(inventory, j.vm) for j in running if j.kind == JobKind.BACKUP]
        if candidate.kind != JobKind.BACKUP:
            return None  # maintenance reads no VM disk
        return admit(loads, job_load(inventory, candidate.vm), limits)

    threads: dict[int, threading.Thread] = {}
    started: list[int] = []
    try:
        return _serve(
            queue, name, blocked, slots, ctx, inventory, once, poll, started, threads, stop
        )
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C (the CLI turns SIGTERM into this)
        SHUTDOWN.set()  # the jobs stop at their next block or wait, and are queued again
        deadline = time.monotonic() + STOP_GRACE
        for thread in threads.values():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        raise


def _serve(
    queue: JobQueue,
    name: str,
    blocked: Callable[[list[Job], Job], str | None],
    slots: int,
    ctx: Context,
    inventory: Inventory,
    once: bool,
    poll: float,
    started: list[int],
    threads: dict[int, threading.Thread],
    stop: threading.Event | None,
) -> list[int]:
    """The worker's loop: reap lost jobs, claim what admission allows, collect the ended."""
    while True:
        for lost, outcome in queue.reap():
            if outcome == "failed":  # attempts spent; "queued" is retried, "cancelled" wanted
                alert_failure(queue, lost, ("worker_lost", "its worker stopped answering"))
        stopping = SHUTDOWN.is_set() or (stop is not None and stop.is_set())
        while (
            not stopping
            and len(threads) < slots
            and (job := queue.claim(name, blocked)) is not None
        ):
            thread = threading.Thread(
                target=run_claimed_job,
                args=(ctx, inventory, queue, job),
                name=f"job-{job.id}",
                daemon=True,
            )
            threads[job.id] = thread
            started.append(job.id)
            thread.start()
        for job_id in [j for j, t in threads.items() if not t.is_alive()]:
            threads.pop(job_id).join()
        if not threads and (stopping or (once and not queue.queued())):
            return started
        time.sleep(poll)


class _Progress:
    """A running job's progress per disk, written to its row every ``PROGRESS_EVERY``
    seconds at most, and whenever a disk is done."""

    def __init__(self, queue: JobQueue, job_id: int, cancel: threading.Event) -> None:
        self.queue, self.job_id, self.cancel = queue, job_id, cancel
        self.disks: dict[str, dict[str, Any]] = {}
        self.written = 0.0
        self.lock = threading.Lock()

    def check_cancelled(self) -> None:
        """Called by the engine while it waits (throttled reads, a pool's turn) too."""
        if self.cancel.is_set():
            raise Cancelled(f"job {self.job_id} was cancelled")

    def __call__(self, event: ProgressEvent) -> None:
        self.check_cancelled()
        with self.lock:
            self.disks[event.disk] = {
                "operation": event.operation,
                "done": event.done,
                "total": event.total,
                **({"read": event.read} if event.read is not None else {}),
            }
            now = time.monotonic()
            if now - self.written < PROGRESS_EVERY and event.done < event.total:
                return
            self.written = now
            # Written under the lock: two disks' writes must land in the order they were
            # taken, or an older snapshot could overwrite a disk's final 100 %.
            self.queue.report_progress(self.job_id, dict(self.disks))


def run_claimed_job(
    ctx: Context,
    inventory: Inventory,
    queue: JobQueue,
    job: Job,
    *,
    heartbeat: float = HEARTBEAT,
    beat: Callable[[], None] | None = None,
) -> None:
    """Run a claimed job to its outcome. ``beat`` is called at every look for a cancel
    (about every second): a broker's worker renews its admission lease there."""
    worker = str(job.worker)
    cancel = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        """Beat every HEARTBEAT s, look for a cancel every CANCEL_POLL s. A catalog that
        does not answer is tried again, never ends the watch: a watch that died would
        let the job be reaped (and run twice) while this worker still runs it."""
        beaten = time.monotonic()
        while not stop.wait(CANCEL_POLL):
            try:
                if beat is not None:
                    beat()
                if time.monotonic() - beaten >= heartbeat:
                    beaten = time.monotonic()
                    stop_now = queue.heartbeat(job.id, worker=worker)
                else:
                    stop_now = queue.should_stop(job.id, worker)
            except Exception as exc:
                log.warning("warning: job %d: the catalog did not answer (%s)", job.id, exc)
                continue
            if stop_now:
                cancel.set()

    watcher = threading.Thread(target=watch, name=f"heartbeat-{job.id}", daemon=True)
    watcher.start()
    outcome = None
    started = time.monotonic()
    log.info("job %d started: %s (attempt %d, %s)", job.id, _what(job), job.attempts, worker)
    try:
        if queue.heartbeat(job.id, worker=worker):
            raise Cancelled(f"job {job.id} was cancelled")
        run_job(JobRun(ctx, inventory, queue, job, _Progress(queue, job.id, cancel)))
    except Cancelled:
        if queue.owns(job.id, worker):
            queue.finish(job.id, "cancelled")
        else:
            abandoned(job.id, worker)
    except VmvaultError as exc:
        error = (exc.code, exc.message)
        # transient: the VM or the hypervisor was busy, or the worker itself was stopped
        # (SIGTERM, Ctrl-C: "interrupted") and hands its jobs back
        outcome = _retry_or_fail(queue, job.id, worker, error, exc.transient)
    except Exception as exc:  # a bug or the OS: recorded, never left "running"
        error = ("internal", f"{type(exc).__name__}: {exc}")
        outcome = _retry_or_fail(queue, job.id, worker, error, isinstance(exc, OSError))
    finally:
        stop.set()
        watcher.join()
        _log_end(queue, job, time.monotonic() - started)
    if outcome == "failed":
        alert_failure(queue, job, error)


def _what(job: Job) -> str:
    return f"{job.kind} of {job.vm}" if job.vm else str(job.kind)


def _log_end(queue: JobQueue, job: Job, seconds: float) -> None:
    """The job's outcome as its row now says (succeeded, failed, queued again for a retry,
    cancelled), how long this run took, and the error if there is one."""
    try:
        row = queue.get(job.id)
    except Exception as exc:  # the catalog away: the outcome is on the row, not here
        log.info(
            "job %d ended: %s after %.1f s (outcome unknown: %s)", job.id, _what(job), seconds, exc
        )
        return
    state = "queued again" if row.state == JobState.QUEUED else str(row.state)
    error = (
        f": {row.error_code}: {row.error_message}"
        if row.state != "succeeded" and row.error_code
        else ""
    )
    log.info(
        "job %d ended: %s %s after %s%s", job.id, _what(job), state, human_duration(seconds), error
    )


def _retry_or_fail(
    queue: JobQueue, job_id: int, worker: str, error: tuple[str, str], transient: bool
) -> str | None:
    """The queue's retry policy, applied only if the job is still this worker's."""
    if not queue.owns(job_id, worker):
        abandoned(job_id, worker)
        return None
    return queue.retry_or_fail(job_id, error, transient=transient)


def alert_failure(queue: JobQueue, job: Job, error: tuple[str, str]) -> None:
    what = _what(job)
    raise_alert(
        queue.catalog,
        queue.vault_id,
        "job_failed",
        f"job {job.id} ({what}) failed: {error[1]}",
        vm=job.vm or None,
        details={"job": job.id, "code": error[0]},
    )
