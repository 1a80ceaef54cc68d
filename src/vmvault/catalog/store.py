"""Catalog access: record points and jobs, list and count them, rebuild from a vault."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, event, func, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from vmvault.catalog.models import (
    Alert,
    Base,
    Job,
    PointDisk,
    PointVerification,
    RecoveryPoint,
)
from vmvault.model.point import RecoveryPoint as PointDoc


def default_catalog_url() -> str:
    """``$VMVAULT_CATALOG``, else a SQLite file in the user's data directory."""
    if url := os.environ.get("VMVAULT_CATALOG"):
        return url
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{base / 'vmvault' / 'catalog.db'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for a running backup
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _add_new_columns(engine: Engine) -> None:
    """Columns added after a table first shipped: a catalog made by an older version gets
    them (nullable, so old rows stay valid); create_all only creates missing tables."""
    present = inspect(engine)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in present.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as conn:
                    add = f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'
                    conn.execute(text(add))


class Catalog:
    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_catalog_url()
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(self.url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        _add_new_columns(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    # -- recovery points ------------------------------------------------------------------

    def record_point(self, vault_id: str, point: PointDoc) -> None:
        """Add (or replace) a point's row. Idempotent: a catalog rebuild running at the same
        time may already have copied the just-committed point from the vault."""
        for attempt in range(2):
            try:
                with self.session.begin() as s:
                    s.execute(delete(PointDisk).where(PointDisk.point_id == point["id"]))
                    s.execute(delete(RecoveryPoint).where(RecoveryPoint.id == point["id"]))
                    self._add_point(s, vault_id, point)
                return
            except IntegrityError:
                if attempt:
                    raise

    def _add_point(self, s: Session, vault_id: str, point: PointDoc) -> None:
        disks = [
            PointDisk(
                name=d["name"],
                source=d.get("source", ""),
                size=d["size"],
                manifest_id=d["manifest"],
                allocated=d["stats"].get("allocated", 0),
                read=d["stats"].get("read", 0),
                changed=d["stats"].get("changed", 0),
                new=d["stats"].get("new", 0),
                stored=d["stats"].get("stored", 0),
                seconds=d["stats"].get("seconds", 0.0),
            )
            for d in point["disks"]
        ]
        s.merge(
            RecoveryPoint(
                id=point["id"],
                vault_id=vault_id,
                vm=point["vm"],
                created_at=_parse_time(point["created"]),
                completed_at=_parse_time(point.get("completed")),
                parent_id=point.get("parent"),
                type=point.get("type", "full"),
                consistency=point["consistency"]["level"],
                consistency_reason=point["consistency"].get("reason", ""),
                size=sum(d.size for d in disks),
                changed=sum(d.changed for d in disks),
                stored=sum(d.stored for d in disks),
                disks=disks,
            )
        )

    def points(self, vault_id: str, vm: str | None = None) -> list[RecoveryPoint]:
        with self.session() as s:
            query = (
                select(RecoveryPoint)
                .where(RecoveryPoint.vault_id == vault_id)
                .options(selectinload(RecoveryPoint.disks))
                .order_by(RecoveryPoint.id)
            )
            if vm is not None:
                query = query.where(RecoveryPoint.vm == vm)
            return list(s.scalars(query))

    def forget_points(self, vault_id: str, point_ids: Iterable[str]) -> None:
        """Drop the rows of points deleted from the vault, and their verifies."""
        ids = list(point_ids)
        with self.session.begin() as s:
            s.execute(delete(PointDisk).where(PointDisk.point_id.in_(ids)))
            s.execute(
                delete(PointVerification).where(
                    PointVerification.vault_id == vault_id, PointVerification.point_id.in_(ids)
                )
            )
            s.execute(
                delete(RecoveryPoint).where(
                    RecoveryPoint.vault_id == vault_id, RecoveryPoint.id.in_(ids)
                )
            )

    def rebuild(self, vault_id: str, points: Iterable[PointDoc]) -> int:
        """Replace this vault's points with those read from the vault itself."""
        count = 0
        with self.session.begin() as s:
            ids = select(RecoveryPoint.id).where(RecoveryPoint.vault_id == vault_id)
            s.execute(delete(PointDisk).where(PointDisk.point_id.in_(ids)))
            s.execute(delete(RecoveryPoint).where(RecoveryPoint.vault_id == vault_id))
            for point in points:
                self._add_point(s, vault_id, point)
                count += 1
        return count

    # -- jobs ---------------------------------------------------------------------------

    def start_job(
        self, vault_id: str, kind: str, vm: str | None = None, started: datetime | None = None
    ) -> int:
        now = started or datetime.now(UTC)
        with self.session.begin() as s:
            job = Job(
                vault_id=vault_id,
                kind=kind,
                vm=vm,
                state="running",
                created_at=now,
                started_at=now,
                details={},
            )
            s.add(job)
            s.flush()
            return job.id

    def finish_job(
        self,
        job_id: int,
        state: str,
        *,
        point_id: str | None = None,
        counters: dict[str, int] | None = None,
        error: tuple[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        with self.session.begin() as s:
            job = s.get_one(Job, job_id)
            job.state = state
            job.finished_at = datetime.now(UTC)
            job.point_id = point_id
            for name, value in (counters or {}).items():
                setattr(job, name, value)
            if error:
                job.error_code, job.error_message = error
            job.details = details or {}

    def jobs(self, vault_id: str, limit: int = 50) -> list[Job]:
        with self.session() as s:
            query = select(Job).where(Job.vault_id == vault_id).order_by(Job.id.desc()).limit(limit)
            return list(s.scalars(query))

    def job_page(
        self,
        vault_id: str,
        *,
        state: str | None = None,
        vm: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[int, list[Job]]:
        """How many of the vault's jobs match (in ``state``, of ``vm``; either may be left
        out), and one page of them, newest first."""
        where = [Job.vault_id == vault_id]
        if state:
            where.append(Job.state == state)
        if vm:
            where.append(Job.vm == vm)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(Job).where(*where)) or 0
            rows = s.scalars(
                select(Job).where(*where).order_by(Job.id.desc()).offset(offset).limit(limit)
            )
            return total, list(rows)

    def jobs_finished(
        self, vault_id: str, since: datetime, until: datetime | None = None
    ) -> list[Job]:
        """The vault's jobs that finished at or after ``since`` (and before ``until``)."""
        where = [Job.vault_id == vault_id, Job.finished_at >= since]
        if until is not None:
            where.append(Job.finished_at < until)
        with self.session() as s:
            return list(s.scalars(select(Job).where(*where).order_by(Job.id)))

    def job_counts(self, vault_id: str) -> list[tuple[str, str, int]]:
        """How many of the vault's jobs there are of each kind in each state."""
        with self.session() as s:
            query = (
                select(Job.kind, Job.state, func.count())
                .where(Job.vault_id == vault_id)
                .group_by(Job.kind, Job.state)
            )
            return [(kind, state, count) for kind, state, count in s.execute(query)]

    # -- alerts (raised, listed and delivered by vmvault.alerts) ---------------------------

    def alert_counts(self, vault_id: str) -> list[tuple[str, int]]:
        """How many alerts the vault has raised of each kind."""
        with self.session() as s:
            by_kind = (
                select(Alert.kind, func.count())
                .where(Alert.vault_id == vault_id)
                .group_by(Alert.kind)
            )
            return [(kind, count) for kind, count in s.execute(by_kind)]
