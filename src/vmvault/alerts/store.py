"""Alert rows in the catalog: raise once per event, list newest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from vmvault.catalog.models import Alert

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog

# Every kind and its severity: job failures, and the security events Azure Backup raises.
KINDS: dict[str, str] = {
    "job_failed": "error",
    "backup_data_deleted": "critical",
    "purge_upcoming": "warning",
    "purge_done": "critical",
    "immutability_disabled": "critical",
    "soft_delete_shortened": "warning",
    "retention_shortened": "warning",
    "point_damaged": "critical",
    "vault_damaged": "critical",
    "replication_failed": "error",
    "host_without_worker": "error",
    "drill_failed": "error",  # a restore drill's guest gave no sign of life
    "instant_restore_space_low": "warning",
}


def raise_alert(
    catalog: Catalog,
    vault_id: str,
    kind: str,
    message: str,
    *,
    vm: str | None = None,
    details: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    now: datetime | None = None,
) -> int | None:
    """Store an alert; returns its id, or None when ``dedupe_key`` was raised before."""
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r}")
    try:
        with catalog.session.begin() as s:
            alert = Alert(
                vault_id=vault_id,
                at=now or datetime.now(UTC),
                kind=kind,
                severity=KINDS[kind],
                vm=vm,
                message=message,
                details=details or {},
                dedupe_key=dedupe_key,
                deliveries=[],
            )
            s.add(alert)
            s.flush()
            return alert.id
    except IntegrityError:
        return None  # the same event (dedupe_key) is already recorded


def alert_doc(alert: Alert, *, deliveries: bool = True) -> dict[str, Any]:
    """An alert as the API lists it and a webhook receives it (without its deliveries)."""
    doc = {
        "id": alert.id,
        "vault_id": alert.vault_id,
        "at": alert.at.isoformat(),
        "kind": alert.kind,
        "severity": alert.severity,
        "vm": alert.vm,
        "message": alert.message,
        "details": alert.details,
    }
    if deliveries:
        doc["deliveries"] = alert.deliveries
    return doc


def list_alerts(
    catalog: Catalog, vault_id: str, *, offset: int = 0, limit: int = 50
) -> tuple[int, list[Alert]]:
    """The total number of alerts, and one page of them, newest first."""
    with catalog.session() as s:
        where = Alert.vault_id == vault_id
        total = s.scalar(select(func.count()).select_from(Alert).where(where)) or 0
        query = select(Alert).where(where).order_by(Alert.id.desc()).offset(offset).limit(limit)
        return total, list(s.scalars(query))
