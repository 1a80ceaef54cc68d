"""Restore drills' outcomes: recorded after each drill, read by the CLI, API and dashboard."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from vmvault.catalog.models import BootDrill
from vmvault.catalog.store import Catalog


def record_drill(
    catalog: Catalog,
    vault_id: str,
    *,
    point_id: str,
    vm: str,
    at: datetime,
    passed: bool,
    signal: str,
    seconds: float,
    message: str,
) -> dict[str, Any]:
    """Record a drill's outcome; the outcome as ``drill_doc`` shows it."""
    drill = BootDrill(
        vault_id=vault_id,
        point_id=point_id,
        vm=vm,
        at=at,
        passed=passed,
        signal=signal,
        seconds=seconds,
        message=message,
    )
    with catalog.session.begin() as s:
        s.add(drill)
    return drill_doc(drill)


def drill_doc(drill: BootDrill) -> dict[str, Any]:
    return {
        "point": drill.point_id,
        "vm": drill.vm,
        "at": drill.at.isoformat(),
        "result": "boot-verified" if drill.passed else "failed",
        "signal": drill.signal,
        "seconds": round(drill.seconds, 1),
        "message": drill.message,
    }


def latest_drills(catalog: Catalog, vault_id: str, point_ids: Iterable[str]) -> dict[str, Any]:
    """Each point's newest drill (points never drilled are left out), by point id."""
    ids = list(point_ids)
    if not ids:
        return {}
    with catalog.session() as s:
        query = (
            select(BootDrill)
            .where(BootDrill.vault_id == vault_id, BootDrill.point_id.in_(ids))
            .order_by(BootDrill.at, BootDrill.id)
        )
        return {drill.point_id: drill_doc(drill) for drill in s.scalars(query)}
