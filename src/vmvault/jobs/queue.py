"""The persistent job queue, in the catalog.

States: queued -> running -> succeeded / partially_succeeded / failed / cancelled. A job is
claimed with a conditional UPDATE (state still 'queued'), so two workers never run the same
job. A running job's worker refreshes its heartbeat; a job whose heartbeat stops for
``STALE_AFTER`` (the worker was killed, its host lost) is reaped, never left "running"
forever: a lost worker is a transient failure, so the job is queued again with backoff while
attempts remain, then failed (the worker raises a ``job_failed`` alert); a job whose cancel
was asked for is cancelled instead. Transient failures are retried with exponential backoff
up to ``max_attempts``; a job that succeeds on a later attempt keeps the error of the last
failed one and its ``attempts`` count, so a lost attempt stays visible.

With a broker (``vmvault.cluster``) the queue is given a ``dispatch`` callback: every time a
job becomes queued (enqueued, retried, reaped) it is called after the commit, with the delay
before the job may start, and sends a message naming the job to a worker. The row stays the
record; the message only says "look at job N".
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from vmvault.catalog.models import Job
from vmvault.catalog.store import Catalog
from vmvault.errors import Conflict, NotFound
from vmvault.model.jobs import FINAL_STATES

STALE_AFTER = timedelta(seconds=120)
BACKOFF = timedelta(seconds=30)


JOB_FIELDS = (
    "id",
    "kind",
    "vm",
    "state",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "queue_wait",
    "attempts",
    "worker",
    "point_id",
    "bytes_read",
    "bytes_changed",
    "bytes_sent",
    "bytes_written",
    "error_code",
    "error_message",
    "cancel_requested",
)


def job_doc(job: Job) -> dict[str, Any]:
    """A job as the CLI and the API show it, with its progress over all disks in percent."""
    doc: dict[str, Any] = {f: getattr(job, f) for f in JOB_FIELDS}
    for name, value in doc.items():
        if isinstance(value, datetime):
            doc[name] = value.isoformat()
    doc["details"] = job.details or {}
    doc["progress"] = job.progress or {}
    done = sum(d.get("done", 0) for d in doc["progress"].values())
    total = sum(d.get("total", 0) for d in doc["progress"].values())
    doc["percent"] = (
        100.0 if job.state == "succeeded" else round(100 * done / total, 1) if total else 0.0
    )
    doc["live"] = live_figures(job, done, total, datetime.now(UTC))
    return doc


def live_figures(job: Job, done: int, total: int, now: datetime) -> dict[str, float | None]:
    """How long the job has run (or ran), the bytes it read so far, the rate of those bytes
    (not of the disks' logical sizes: holes cost nothing), and for a running job the time
    left at the pace of its progress so far; None where there is nothing to tell yet."""
    if job.started_at is None:
        return {"elapsed": None, "read": None, "rate": None, "eta": None}
    end = job.finished_at or now
    elapsed = max((end - job.started_at).total_seconds(), 0.0)
    progress = job.progress or {}
    counted = [d["read"] for d in progress.values() if "read" in d]
    read = job.bytes_read if job.finished_at is not None else (sum(counted) if counted else None)
    rate = read / elapsed if read and elapsed > 0 else None
    eta = None
    if job.state == "running" and 0 < done < total:
        eta = elapsed * (total - done) / done
    return {"elapsed": elapsed, "read": read, "rate": rate, "eta": eta}


# job id, kind, VM, seconds before it may start: sends the job to a worker (a broker's task)
Dispatch = Callable[[int, str, str, float], None]


class JobQueue:
    def __init__(
        self,
        catalog: Catalog,
        vault_id: str,
        *,
        dispatch: Dispatch | None = None,
        backoff: timedelta | None = None,
        stale_after: timedelta | None = None,
    ) -> None:
        self.catalog = catalog
        self.vault_id = vault_id
        self.dispatch = dispatch
        self.backoff = BACKOFF if backoff is None else backoff
        self.stale_after = STALE_AFTER if stale_after is None else stale_after

    def _dispatch(self, job_id: int, kind: str, vm: str, delay: timedelta) -> None:
        if self.dispatch is not None:
            self.dispatch(job_id, kind, vm, max(0.0, delay.total_seconds()))

    def enqueue(
        self,
        kind: str,
        vm: str,
        spec: dict[str, Any] | None = None,
        *,
        max_attempts: int = 3,
        now: datetime | None = None,
    ) -> int:
        now = now or datetime.now(UTC)
        with self.catalog.session.begin() as s:
            job = Job(
                vault_id=self.vault_id,
                kind=kind,
                vm=vm,
                state="queued",
                created_at=now,
                queued_at=now,
                spec=spec or {},
                max_attempts=max_attempts,
                details={},
            )
            s.add(job)
            s.flush()
            job_id = int(job.id)
        self._dispatch(job_id, kind, vm, timedelta(0))
        return job_id

    def send(self, job: Job, delay: timedelta | None = None) -> None:
        """Send a queued job to the workers again (with a broker; else nothing to do)."""
        self._dispatch(job.id, job.kind, job.vm or "", delay or timedelta(0))

    def get(self, job_id: int) -> Job:
        with self.catalog.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.vault_id != self.vault_id:
                raise NotFound(f"no job {job_id}")
            return job

    def running(self) -> list[Job]:
        with self.catalog.session() as s:
            query = select(Job).where(Job.vault_id == self.vault_id, Job.state == "running")
            return list(s.scalars(query))

    def queued(self, now: datetime | None = None) -> list[Job]:
        now = now or datetime.now(UTC)
        with self.catalog.session() as s:
            query = (
                select(Job)
                .where(Job.vault_id == self.vault_id, Job.state == "queued")
                .order_by(Job.id)
            )
            return [
                j
                for j in s.scalars(query)
                if (j.not_before or now) <= now and not j.cancel_requested
            ]

    def claim(
        self,
        worker: str,
        blocked: Callable[[list[Job], Job], str | None],
        now: datetime | None = None,
    ) -> Job | None:
        """The oldest queued job that admission lets start now, marked running by ``worker``.

        ``blocked(running, candidate)`` returns why a job must wait, or None. Jobs that
        must wait stay queued; the time they waited is recorded when they start.
        """
        now = now or datetime.now(UTC)
        running = self.running()
        for job in self.queued(now):
            if blocked(running, job) is not None:
                continue
            if self._take(job, worker, now):
                return self.get(job.id)
        return None

    def claim_id(self, job_id: int, worker: str, now: datetime | None = None) -> Job | None:
        """Job ``job_id`` marked running by ``worker`` if it is queued, due and not
        cancelled (a broker's message names the job; admission was asked before), else
        None: a message for a job already running or finished is a no-op."""
        now = now or datetime.now(UTC)
        try:
            job = self.get(job_id)
        except NotFound:
            return None
        if job.state != "queued" or job.cancel_requested or (job.not_before or now) > now:
            return None
        return self.get(job_id) if self._take(job, worker, now) else None

    def _take(self, job: Job, worker: str, now: datetime) -> bool:
        """The conditional update: the job becomes ``worker``'s only if still queued."""
        with self.catalog.session.begin() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == "queued")
                .values(
                    state="running",
                    worker=worker,
                    started_at=now,
                    heartbeat_at=now,
                    attempts=Job.attempts + 1,
                    queue_wait=(now - (job.queued_at or now)).total_seconds(),
                )
            )
        return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]

    def heartbeat(
        self, job_id: int, now: datetime | None = None, *, worker: str | None = None
    ) -> bool:
        """Refresh a running job; returns whether its worker should stop: a cancel was
        asked for or, given ``worker``, the job is no longer that worker's (it was reaped
        while the worker could not beat, and may be running elsewhere already)."""
        where = [Job.id == job_id, Job.state == "running"]
        if worker is not None:
            where.append(Job.worker == worker)
        with self.catalog.session.begin() as s:
            s.execute(update(Job).where(*where).values(heartbeat_at=now or datetime.now(UTC)))
        return self.should_stop(job_id, worker)

    def should_stop(self, job_id: int, worker: str | None = None) -> bool:
        """Whether a running job's worker should stop (a cancel, or the job is not its own
        any more), read without writing: cheap enough to ask every second."""
        with self.catalog.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.cancel_requested:
                return True
            return worker is not None and not (job.state == "running" and job.worker == worker)

    def owns(self, job_id: int, worker: str) -> bool:
        """Whether ``worker`` still runs the job (it was not reaped and claimed again)."""
        with self.catalog.session() as s:
            job = s.get(Job, job_id)
            return job is not None and job.state == "running" and job.worker == worker

    def report_progress(self, job_id: int, progress: dict[str, Any]) -> None:
        with self.catalog.session.begin() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "running")
                .values(progress=progress)
            )

    def finish(self, job_id: int, state: str, **fields: Any) -> None:
        assert state in FINAL_STATES
        self.catalog.finish_job(job_id, state, **fields)

    def retry_or_fail(
        self, job_id: int, error: tuple[str, str], *, transient: bool, now: datetime | None = None
    ) -> str:
        now = now or datetime.now(UTC)
        job = self.get(job_id)
        if transient and job.attempts < job.max_attempts and not job.cancel_requested:
            delay = self.backoff * (2 ** (job.attempts - 1))
            with self.catalog.session.begin() as s:
                s.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(
                        state="queued",
                        worker=None,
                        not_before=now + delay,
                        error_code=error[0],
                        error_message=error[1],
                    )
                )
            self._dispatch(job_id, job.kind, job.vm or "", delay)
            return "queued"
        self.finish(job_id, "failed", error=error)
        return "failed"

    def reap(
        self, now: datetime | None = None, stale_after: timedelta | None = None
    ) -> list[tuple[Job, str]]:
        """Running jobs whose worker stopped beating (killed, host lost): a transient
        failure, so queued again with backoff while attempts remain, else failed; a job
        whose cancel was asked for is cancelled. Returns each reaped job with its outcome
        ("queued", "failed" or "cancelled"); the caller alerts the failed.

        Each job changes only if it is still the same stale attempt (same worker, attempt
        and heartbeat), so two reapers at once (a worker and a server) reap it once, and a
        worker whose heartbeat came back just in time keeps its job.
        """
        now = now or datetime.now(UTC)
        stale_after = self.stale_after if stale_after is None else stale_after
        reaped = []
        for job in self.running():
            if now - (job.heartbeat_at or now) <= stale_after:
                continue
            message = f"worker {job.worker} stopped answering"
            values: dict[str, Any] = {"error_code": "worker_lost", "error_message": message}
            if job.cancel_requested:
                outcome = "cancelled"
                values.update(state="cancelled", finished_at=now)
            elif job.attempts < job.max_attempts:
                outcome = "queued"
                delay = self.backoff * (2 ** (job.attempts - 1))
                values.update(state="queued", worker=None, not_before=now + delay)
            else:
                outcome = "failed"
                values.update(state="failed", finished_at=now)
            with self.catalog.session.begin() as s:
                changed = s.execute(
                    update(Job)
                    .where(
                        Job.id == job.id,
                        Job.state == "running",
                        Job.worker == job.worker,
                        Job.attempts == job.attempts,
                        Job.heartbeat_at == job.heartbeat_at,
                    )
                    .values(**values)
                )
            if changed.rowcount == 1:  # type: ignore[attr-defined]
                reaped.append((job, outcome))
                if outcome == "queued":
                    self._dispatch(job.id, job.kind, job.vm or "", values["not_before"] - now)
        return reaped

    def cancel(self, job_id: int) -> str:
        """A queued job is cancelled at once; a running one at its next block."""
        job = self.get(job_id)
        if job.state in FINAL_STATES:
            raise Conflict(f"job {job_id} is already {job.state}")
        with self.catalog.session.begin() as s:
            if job.state == "queued":
                s.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(state="cancelled", finished_at=datetime.now(UTC))
                )
                return "cancelled"
            s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
            return "cancelling"
