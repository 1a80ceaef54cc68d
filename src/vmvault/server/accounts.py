"""API tokens, dashboard sessions and the audit log, kept in the catalog.

A token is shown once, when it is created; the catalog keeps only its SHA-256 (tokens are
256 random bits, so a plain hash is enough: there is nothing to brute-force). Sessions are
the same: the cookie holds a random value whose hash is the session's key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
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
    ) -> None:
        with self.catalog.session.begin() as s:
            s.add(
                AuditEntry(
                    at=datetime.now(UTC),
                    actor=principal.name if principal else "anonymous",
                    role=principal.role.name if principal else "",
                    action=action,
                    target=target[:2000],
                    status=status,
                    remote=remote,
                )
            )

    def audit_log(self, offset: int = 0, limit: int = 50) -> tuple[int, list[AuditEntry]]:
        with self.catalog.session() as s:
            total = s.scalar(select(func.count()).select_from(AuditEntry)) or 0
            query = select(AuditEntry).order_by(AuditEntry.id.desc()).offset(offset).limit(limit)
            return total, list(s.scalars(query))
