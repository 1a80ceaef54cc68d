"""Once-a-day tasks of a vault claimed in the catalog, so that whoever runs a scheduler on
it (a CLI scheduler, a server, both) the task runs once that day."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from vmvault.catalog.models import DailyClaim
from vmvault.catalog.store import Catalog


def claim_daily(catalog: Catalog, vault_id: str, task: str, day: date, by: str) -> bool:
    """Take ``task`` of ``vault_id`` for ``day``: True for the one caller that inserts the
    claim, False for any other (the row exists: someone took it first)."""
    try:
        with catalog.session.begin() as s:
            s.add(
                DailyClaim(
                    vault_id=vault_id,
                    task=task,
                    day=day.isoformat(),
                    claimed_at=datetime.now(UTC),
                    claimed_by=by,
                )
            )
    except IntegrityError:
        return False
    return True


def claimed_by(catalog: Catalog, vault_id: str, task: str, day: date) -> str | None:
    """Who took ``task`` for ``day``, if anyone did."""
    with catalog.session() as s:
        query = select(DailyClaim.claimed_by).where(
            DailyClaim.vault_id == vault_id,
            DailyClaim.task == task,
            DailyClaim.day == day.isoformat(),
        )
        return s.scalar(query)
