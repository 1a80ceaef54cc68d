"""Queries over the history of backup jobs: what the scheduler and the planner ask."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from vmvault.catalog.models import Job
from vmvault.catalog.store import Catalog
from vmvault.model.jobs import JobKind, JobState


def backup_wall_times(catalog: Catalog, vault_id: str) -> dict[str, float]:
    """Seconds each succeeded backup job took, start to end, by the point it made."""
    with catalog.session() as s:
        query = select(Job.point_id, Job.started_at, Job.finished_at).where(
            Job.vault_id == vault_id,
            Job.kind == JobKind.BACKUP,
            Job.state == JobState.SUCCEEDED,
            Job.point_id.is_not(None),
        )
        return {
            str(point_id): (finished - started).total_seconds()
            for point_id, started, finished in s.execute(query)
            if started is not None and finished is not None
        }


def last_scheduled_due(catalog: Catalog, vault_id: str, vm: str) -> datetime | None:
    """The due time of the VM's newest scheduled backup job (None before its first)."""
    with catalog.session() as s:
        query = (
            select(Job)
            .where(Job.vault_id == vault_id, Job.vm == vm, Job.kind == JobKind.BACKUP)
            .order_by(Job.id.desc())
        )
        for job in s.scalars(query):
            due = (job.spec or {}).get("due")
            if due:
                return datetime.fromisoformat(due)
    return None


def replication_jobs(catalog: Catalog, vault_id: str, limit: int = 200) -> list[Job]:
    """The vault's newest replication jobs (queued, running or ended), newest first."""
    with catalog.session() as s:
        query = (
            select(Job)
            .where(Job.vault_id == vault_id, Job.kind == JobKind.REPLICATE)
            .order_by(Job.id.desc())
            .limit(limit)
        )
        return list(s.scalars(query))


def replication_queued_since(catalog: Catalog, vault_id: str, copy: str, since: datetime) -> bool:
    """Whether the inventory's copy ``copy`` had a replication queued at or after ``since``."""
    for job in replication_jobs(catalog, vault_id):
        if (job.spec or {}).get("copy") == copy and job.created_at >= since:
            return True
    return False
