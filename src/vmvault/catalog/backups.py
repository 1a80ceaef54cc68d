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
