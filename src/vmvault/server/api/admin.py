"""Alerts, the audit log, and API tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vmvault.alerts.store import alert_doc, list_alerts
from vmvault.errors import Conflict
from vmvault.server.accounts import token_doc
from vmvault.server.api.schemas import (
    Admin,
    Limit,
    Offset,
    Reader,
    RowId,
    State,
    TokenRequest,
    page,
)

router = APIRouter()


@router.get("/alerts", tags=["alerts"])
def alerts(state: State, _: Reader, offset: Offset = 0, limit: Limit = 50) -> dict[str, Any]:

    total, rows = list_alerts(state.catalog, state.vault_id, offset=offset, limit=limit)
    return page([alert_doc(a) for a in rows], total, offset, limit)


@router.get("/audit", tags=["admin"])
def audit(state: State, _: Admin, offset: Offset = 0, limit: Limit = 50) -> dict[str, Any]:
    total, rows = state.accounts.audit_log(offset, limit)
    items = [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "actor": e.actor,
            "role": e.role,
            "action": e.action,
            "target": e.target,
            "status": e.status,
            "remote": e.remote,
        }
        for e in rows
    ]
    return page(items, total, offset, limit)


@router.get("/tokens", tags=["admin"])
def list_tokens(state: State, _: Admin) -> dict[str, Any]:
    rows = [token_doc(t) for t in state.accounts.tokens()]
    return page(rows, len(rows), 0, len(rows) or 1)


@router.post("/tokens", tags=["admin"], status_code=201)
def create_token(body: TokenRequest, state: State, who: Admin) -> dict[str, Any]:
    """A new token; its secret is in this answer only and cannot be shown again."""
    secret, row = state.accounts.create_token(body.name, body.role, created_by=who.name)
    return {**token_doc(row), "token": secret}


@router.delete("/tokens/{token_id}", tags=["admin"])
def revoke_token(token_id: RowId, state: State, who: Admin) -> dict[str, Any]:
    if token_id == who.token_id:
        raise Conflict("a token cannot revoke itself; use another admin token")
    return token_doc(state.accounts.revoke(token_id))
