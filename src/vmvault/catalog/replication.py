"""Queries over the history of replication jobs: what the scheduler asks (was this copy's
window served?) and what the dashboard shows (each copy, its last success, its lag)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from vmvault.catalog.models import Job
from vmvault.catalog.store import Catalog
from vmvault.inventory import Inventory
from vmvault.model.jobs import JobKind, JobState

DONE = (JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED)


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


def copies_status(
    catalog: Catalog, vault_id: str, inventory: Inventory, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Each copy of the vault, from the inventory's entries and the replication history:
    its last run and last success, and its lag (how long the oldest point it lacks has
    waited; 0 when it holds every point the vault had at its last success)."""
    now = now or datetime.now(UTC)
    copies: dict[str, dict[str, Any]] = {}
    for name, entry in inventory.replication.items():
        copies[name] = {"name": name, "to": entry.to, "destination": None, "jobs": []}
    for job in replication_jobs(catalog, vault_id):
        details = job.details or {}
        entry_name = (job.spec or {}).get("copy")
        destination = details.get("destination")
        key = (
            entry_name
            if entry_name in copies
            else _by_destination(copies, destination) or destination
        )
        if key is None:
            continue  # a replication that failed before it knew where it wrote
        slot = copies.setdefault(
            key, {"name": None, "to": destination, "destination": None, "jobs": []}
        )
        slot["destination"] = slot["destination"] or destination
        slot["jobs"].append(job)
    created = sorted(row.created_at for row in catalog.points(vault_id))
    return [_status(slot, created, now) for slot in copies.values()]


def _by_destination(copies: dict[str, dict[str, Any]], destination: str | None) -> str | None:
    for key, slot in copies.items():
        if destination is not None and destination in (slot["destination"], slot["to"]):
            return key
    return None


def _status(slot: dict[str, Any], created: list[datetime], now: datetime) -> dict[str, Any]:
    jobs = slot.pop("jobs")  # newest first
    last = jobs[0] if jobs else None
    success = next((j for j in jobs if j.state in DONE), None)
    # The copy holds every point the vault had when its last successful run started.
    synced_at = success.started_at if success is not None else None
    waiting = [c for c in created if synced_at is None or c > synced_at]
    last_run = None
    if last is not None:
        at = last.finished_at or last.created_at
        last_run = {"job": last.id, "state": last.state, "at": at.isoformat()}
        last_run["error"] = last.error_message
    finished = success.finished_at if success is not None else None
    return {
        **slot,
        "last_run": last_run,
        "last_success": finished.isoformat() if finished is not None else None,
        "copied_last": len((success.details or {}).get("copied", [])) if success else 0,
        "points_waiting": len(waiting),
        "lag_seconds": (now - waiting[0]).total_seconds() if waiting else 0.0,
    }
