"""SQLAlchemy 2 tables. Portable types only: the same models run on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UtcDateTime(TypeDecorator[datetime]):
    """Times are UTC and aware both ways. SQLite keeps no time zone and gives naive values
    back; this type makes them aware again, so no caller has to."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the catalog: use UTC")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class RecoveryPoint(Base):
    __tablename__ = "recovery_points"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vault_id: Mapped[str] = mapped_column(String(64), index=True)
    vm: Mapped[str] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    parent_id: Mapped[str | None] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    consistency: Mapped[str] = mapped_column(String(16))
    consistency_reason: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    changed: Mapped[int] = mapped_column(BigInteger, default=0)
    stored: Mapped[int] = mapped_column(BigInteger, default=0)
    disks: Mapped[list[PointDisk]] = relationship(
        back_populates="point", cascade="all, delete-orphan", order_by="PointDisk.name"
    )


class PointDisk(Base):
    __tablename__ = "point_disks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    point_id: Mapped[str] = mapped_column(ForeignKey("recovery_points.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(BigInteger)
    manifest_id: Mapped[str] = mapped_column(String(64))
    allocated: Mapped[int] = mapped_column(BigInteger, default=0)
    read: Mapped[int] = mapped_column(BigInteger, default=0)
    changed: Mapped[int] = mapped_column(BigInteger, default=0)
    new: Mapped[int] = mapped_column(BigInteger, default=0)
    stored: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    point: Mapped[RecoveryPoint] = relationship(back_populates="disks")


class PointVerification(Base):
    """One verify of a recovery point: when, what it found, what it read. Kept apart from
    the point rows, so a catalog rebuild from the vault (which replaces those) keeps them."""

    __tablename__ = "point_verifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vault_id: Mapped[str] = mapped_column(String(64), index=True)
    point_id: Mapped[str] = mapped_column(String(64), index=True)
    vm: Mapped[str] = mapped_column(String(255), default="")
    at: Mapped[datetime] = mapped_column(UtcDateTime())  # when it ended
    ok: Mapped[bool] = mapped_column(Boolean)
    damaged: Mapped[int] = mapped_column(Integer, default=0)  # damaged byte ranges
    first_damage: Mapped[str | None] = mapped_column(Text)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    job_id: Mapped[int | None] = mapped_column(Integer)  # the queued job that ran it, if any


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vault_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # a JobKind: backup, restore, verify, maintenance
    vm: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(32), index=True)  # a JobState
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    point_id: Mapped[str | None] = mapped_column(String(64))
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_written: Mapped[int] = mapped_column(BigInteger, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The queue: what to run, when it may run, who runs it, and whether it still lives.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    not_before: Mapped[datetime | None] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    queue_wait: Mapped[float] = mapped_column(Float, default=0.0)  # seconds queued
    # Live progress of a running job, per disk: {"disk": {"done": n, "total": n, "op": ...}}.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class ApiToken(Base):
    """An API token: only its SHA-256 is kept, so a stolen catalog reveals no token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(255), default="")
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class WebSession(Base):
    """A dashboard login: the cookie's SHA-256, the token it was opened with, a CSRF secret."""

    __tablename__ = "web_sessions"

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AuditEntry(Base):
    """Who did what, when: every write through the API, allowed or refused."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="")
    action: Mapped[str] = mapped_column(String(255))
    target: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(Integer)
    remote: Mapped[str] = mapped_column(String(255), default="")


class Alert(Base):
    """A job failure or a security event, and where it was delivered."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vault_id: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    vm: Mapped[str | None] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Raised once per key (e.g. one "purge upcoming" per VM and purge date).
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    deliveries: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Still to be sent somewhere (the delivery loop reads only these).
    pending: Mapped[bool] = mapped_column(Boolean, default=True, index=True)


class BootDrill(Base):
    """A restore drill's outcome: the point booted in an isolated QEMU, and whether the
    guest gave its sign of life in time. History, like jobs: no foreign key to the point's
    row, which a rebuild replaces (a forgotten point's drills stay as the record of it)."""

    __tablename__ = "boot_drills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vault_id: Mapped[str] = mapped_column(String(64), index=True)
    point_id: Mapped[str] = mapped_column(String(64), index=True)
    vm: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    passed: Mapped[bool] = mapped_column(Boolean)
    signal: Mapped[str] = mapped_column(String(32))  # console, guest_agent or script
    seconds: Mapped[float] = mapped_column(Float)  # from the drill's start to its outcome
    message: Mapped[str] = mapped_column(Text, default="")


class DailyClaim(Base):
    """Who took on a once-a-day task of a vault (its daily maintenance) for a day (UTC).

    The primary key makes the claim atomic on every database: of two schedulers sharing a
    catalog (a CLI scheduler and a server), the second insert fails, and that one leaves
    the day's task to the first."""

    __tablename__ = "daily_claims"

    vault_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD, UTC
    claimed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    claimed_by: Mapped[str] = mapped_column(String(255))
