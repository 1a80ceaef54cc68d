"""Verifies of recovery points: each one's outcome recorded, the newest per point looked up
(what lists show as "last verified" and the scheduler asks to find points due a verify)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from vmvault.catalog.models import Job, PointVerification
from vmvault.catalog.store import Catalog
from vmvault.model.verify import VerifyOutcome


def record_verify(
    catalog: Catalog,
    vault_id: str,
    outcome: VerifyOutcome,
    *,
    job_id: int | None = None,
    at: datetime | None = None,
) -> None:
    with catalog.session.begin() as s:
        s.add(
            PointVerification(
                vault_id=vault_id,
                point_id=outcome.point_id,
                vm=outcome.vm,
                at=at or datetime.now(UTC),
                ok=outcome.ok,
                damaged=outcome.damaged,
                first_damage=outcome.first_damage,
                bytes_read=outcome.bytes_read,
                seconds=outcome.seconds,
                job_id=job_id,
            )
        )


def last_verified(catalog: Catalog, vault_id: str) -> dict[str, PointVerification]:
    """The newest verify of each point of the vault that was ever verified, by point id."""
    with catalog.session() as s:
        newest = (
            select(func.max(PointVerification.id))
            .where(PointVerification.vault_id == vault_id)
            .group_by(PointVerification.point_id)
        )
        rows = s.scalars(select(PointVerification).where(PointVerification.id.in_(newest)))
        return {row.point_id: row for row in rows}


def verified_vm(catalog: Catalog, point_id: str) -> str:
    """The VM of a point as its newest verify recorded it ("" for a point never verified)."""
    with catalog.session() as s:
        query = (
            select(PointVerification.vm)
            .where(PointVerification.point_id == point_id)
            .order_by(PointVerification.id.desc())
            .limit(1)
        )
        return s.scalar(query) or ""


def verifies_queued_since(catalog: Catalog, vault_id: str, since: datetime) -> set[str]:
    """The points whose verify jobs were queued at or after ``since`` (the ids they name)."""
    with catalog.session() as s:
        query = select(Job.spec).where(
            Job.vault_id == vault_id, Job.kind == "verify", Job.created_at >= since
        )
        return {str(spec["point"]) for spec in s.scalars(query) if (spec or {}).get("point")}


def verified_doc(row: PointVerification) -> dict[str, Any]:
    """A point's last verify as lists and the API show it (None there: never verified)."""
    return {
        "at": row.at.isoformat(),
        "ok": row.ok,
        "damaged": row.damaged,
        "first_damage": row.first_damage,
        "bytes_read": row.bytes_read,
        "seconds": round(row.seconds, 3),
        "job": row.job_id,
    }


def last_verified_docs(catalog: Catalog, vault_id: str) -> dict[str, dict[str, Any]]:
    """``verified_doc`` of each verified point's newest verify, by point id."""
    return {pid: verified_doc(row) for pid, row in last_verified(catalog, vault_id).items()}
