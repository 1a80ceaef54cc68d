"""The persistent job queue, in the catalog.

States: queued -> running -> succeeded / partially_succeeded / failed / cancelled. A job is
claimed with a conditional UPDATE (state still 'queued'), so two workers never run the same
job. A running job's worker refreshes its heartbeat; a job whose heartbeat stops (the worker
was killed) is reaped as failed, never left "running" forever, and can be run again.
Transient failures are retried with exponential backoff up to ``max_attempts``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from vmvault.catalog.models import Job
from vmvault.catalog.store import Catalog
from vmvault.errors import Conflict, NotFound

STALE_AFTER = timedelta(seconds=120)
BACKOFF = timedelta(seconds=30)
FINAL_STATES = ("succeeded", "partially_succeeded", "failed", "cancelled")


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
    return doc


class JobQueue:
    def __init__(self, catalog: Catalog, vault_id: str) -> None:
        self.catalog = catalog
        self.vault_id = vault_id

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
            return job.id

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
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                return self.get(job.id)
        return None

    def heartbeat(self, job_id: int, now: datetime | None = None) -> bool:
        """Refresh a running job; returns whether a cancel was asked for."""
        with self.catalog.session.begin() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "running")
                .values(heartbeat_at=now or datetime.now(UTC))
            )
            job = s.get(Job, job_id)
            return bool(job and job.cancel_requested)

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
            delay = BACKOFF * (2 ** (job.attempts - 1))
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
            return "queued"
        self.finish(job_id, "failed", error=error)
        return "failed"

    def reap(
        self, now: datetime | None = None, stale_after: timedelta = STALE_AFTER
    ) -> list[tuple[Job, str]]:
        """Running jobs whose worker stopped beating (killed, host lost): a transient
        failure, so retried with backoff while attempts remain, else failed. Returns each
        reaped job with its outcome ("queued" or "failed"); the caller alerts the failed."""
        now = now or datetime.now(UTC)
        reaped = []
        for job in self.running():
            if now - (job.heartbeat_at or now) > stale_after:
                error = ("worker_lost", f"worker {job.worker} stopped answering")
                reaped.append((job, self.retry_or_fail(job.id, error, transient=True, now=now)))
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
