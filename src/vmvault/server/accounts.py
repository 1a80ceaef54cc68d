"""API tokens, dashboard sessions and the audit log, kept in the catalog.

A token is shown once, when it is created; the catalog keeps only its SHA-256 (tokens are
256 random bits, so a plain hash is enough: there is nothing to brute-force). Sessions are
the same: the cookie holds a random value whose hash is the session's key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select

from vmvault.catalog.models import ApiToken, AuditEntry, WebSession
from vmvault.errors import NotFound, UsageError

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog

TOKEN_PREFIX = "vmv_"
SESSION_LIFETIME = timedelta(hours=12)
LAST_USED_EVERY = timedelta(minutes=1)  # how fresh a token's "last used" is kept
AUDIT_TARGET_MAX = 2000  # characters of an audit row's target


class Role(IntEnum):
    """Each role may do what the ones below it may."""

    reader = 1  # see everything
    operator = 2  # run backups, restores, verifies; cancel jobs
    admin = 3  # policies, inventory, tokens, protection, deleting data

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name]
        except KeyError:
            raise UsageError(f"unknown role {name!r}: use reader, operator or admin") from None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and role (and the session, for the dashboard)."""

    token_id: int
    name: str
    role: Role
    csrf: str | None = None  # set for cookie sessions: unsafe requests must echo it

    def may(self, needed: Role) -> bool:
        return self.role >= needed


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_doc(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role,
        "created_at": token.created_at.isoformat(),
        "created_by": token.created_by,
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "revoked": token.revoked_at is not None,
    }


class Accounts:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- tokens ---------------------------------------------------------------------------

    def create_token(self, name: str, role: str, created_by: str = "") -> tuple[str, ApiToken]:
        """A new token: the secret (to show once) and its row."""
        if not name.strip() or len(name) > 255:
            raise UsageError("a token needs a name of 1 to 255 characters")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.catalog.session.begin() as s:
            row = ApiToken(
                name=name.strip(),
                role=Role.parse(role).name,
                token_hash=_hash(secret),
                created_at=datetime.now(UTC),
                created_by=created_by,
            )
            s.add(row)
            s.flush()
        return secret, row

    def tokens(self) -> list[ApiToken]:
        with self.catalog.session() as s:
            return list(s.scalars(select(ApiToken).order_by(ApiToken.id)))

    def revoke(self, token_id: int) -> ApiToken:
        with self.catalog.session.begin() as s:
            row = s.get(ApiToken, token_id)
            if row is None:
                raise NotFound(f"no token {token_id}")
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            s.execute(delete(WebSession).where(WebSession.token_id == token_id))
            return row

    def authenticate(self, secret: str) -> Principal | None:
        if not secret.startswith(TOKEN_PREFIX):
            return None
        digest = _hash(secret)
        with self.catalog.session.begin() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
            # compare_digest: the lookup found a row by hash; compare anyway in constant time
            if row is None or row.revoked_at or not hmac.compare_digest(row.token_hash, digest):
                return None
            now = datetime.now(UTC)
            last = row.last_used_at
            if last is None or now - last > LAST_USED_EVERY:  # not a write per request
                row.last_used_at = now
            return Principal(row.id, row.name, Role[row.role])

    # -- dashboard sessions ---------------------------------------------------------------

    def open_session(self, principal: Principal) -> str:
        cookie = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.catalog.session.begin() as s:
            s.execute(delete(WebSession).where(WebSession.expires_at < now))
            s.add(
                WebSession(
                    session_hash=_hash(cookie),
                    token_id=principal.token_id,
                    csrf=secrets.token_urlsafe(24),
                    created_at=now,
                    expires_at=now + SESSION_LIFETIME,
                )
            )
        return cookie

    def session_principal(self, cookie: str) -> Principal | None:
        now = datetime.now(UTC)
        with self.catalog.session() as s:
            row = s.get(WebSession, _hash(cookie))
            if row is None:
                return None
            token = s.get(ApiToken, row.token_id)
            if row.expires_at < now or token is None or token.revoked_at is not None:
                return None
            return Principal(token.id, token.name, Role[token.role], csrf=row.csrf)

    def close_session(self, cookie: str) -> None:
        with self.catalog.session.begin() as s:
            s.execute(delete(WebSession).where(WebSession.session_hash == _hash(cookie)))

    # -- audit log ------------------------------------------------------------------------

    def audit(
        self,
        principal: Principal | None,
        action: str,
        target: str,
        status: int,
        remote: str = "",
    ) -> int:
        """Write one row; its id."""
        with self.catalog.session.begin() as s:
            row = AuditEntry(
                at=datetime.now(UTC),
                actor=principal.name if principal else "anonymous",
                role=principal.role.name if principal else "",
                action=action,
                target=target[:AUDIT_TARGET_MAX],
                status=status,
                remote=remote,
            )
            s.add(row)
            s.flush()
            return row.id

    def amend_audit(self, entry_id: int, target: str, status: int) -> None:
        """Rewrite a row's target and status (the count of an aggregated refusal row)."""
        with self.catalog.session.begin() as s:
            row = s.get(AuditEntry, entry_id)
            if row is not None:
                row.target, row.status = target[:AUDIT_TARGET_MAX], status

    def audit_log(self, offset: int = 0, limit: int = 50) -> tuple[int, list[AuditEntry]]:
        with self.catalog.session() as s:
            total = s.scalar(select(func.count()).select_from(AuditEntry)) or 0
            query = select(AuditEntry).order_by(AuditEntry.id.desc()).offset(offset).limit(limit)
            return total, list(s.scalars(query))


@dataclass
class _Window:
    """The refusals of one remote address in one window, and its audit row."""

    opened: float  # clock time of the first refusal
    started_at: datetime
    target: str
    status: int
    count: int = 1
    written: int = 0  # the count the row says
    entry_id: int | None = None  # None while the first refusal's row is being written


class RefusalLog:
    """Anonymous refusals (no or a wrong token, a throttled address, a body too big) in the
    audit log as one row per remote address and window.

    The first refusal of a window is written as it happens; the ones after it are only
    counted, and ``flush`` (the server calls it every second, and at shutdown) rewrites the
    row to say how many were refused. A flood of anonymous requests thus adds one row a
    minute per address, not one per request, and one database write a second at most.
    """

    def __init__(
        self,
        accounts: Accounts,
        *,
        window: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.accounts, self.window, self.max_addresses = accounts, window, max_addresses
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def refused(self, action: str, target: str, status: int, remote: str) -> None:
        now = self.clock()
        with self._lock:
            current = self._windows.get(remote)
            if current is not None and now - current.opened < self.window:
                current.count += 1
                current.status = status
                return
            closed = self._windows.pop(remote, None)
            window = _Window(now, datetime.now(UTC), target, status)
            self._windows[remote] = window
        if closed is not None:
            self._write(closed)
        window.entry_id = self.accounts.audit(None, action, target, status, remote)
        window.written = 1
        if len(self._windows) > self.max_addresses:
            self.flush()

    def flush(self) -> None:
        """Write the counts not yet written; forget the windows that are over."""
        now = self.clock()
        with self._lock:
            pending = [w for w in self._windows.values() if w.entry_id and w.count > w.written]
            written = [r for r, w in self._windows.items() if w.entry_id is not None]
            over = [r for r in written if now - self._windows[r].opened >= self.window]
            # Too many addresses at once: the oldest windows end early (their rows are
            # written; a later refusal from one of them starts a new row).
            surplus = len(self._windows) - len(over) - self.max_addresses
            ended = set(over)
            over += [r for r in written if r not in ended][: max(surplus, 0)]
            for remote in over:
                del self._windows[remote]
        for window in pending:
            self._write(window)

    def _write(self, window: _Window) -> None:
        count = window.count
        if window.entry_id is None or count <= window.written:
            return
        since = window.started_at.strftime("%H:%M:%S")
        text = window.target[:1800]
        summary = f"{text} [refused {count} anonymous requests from this address since {since} UTC]"
        self.accounts.amend_audit(window.entry_id, summary, window.status)
        window.written = count
