"""Who is calling, and may they: bearer tokens for the API, session cookies for the dashboard.

Every route declares the least role it needs with ``Depends(require(Role.x))``. A request with
a session cookie that changes something must also echo the session's CSRF secret in the
``X-CSRF-Token`` header (the dashboard's pages carry it), so another site cannot make a
logged-in browser act.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from vmvault.errors import VmvaultError
from vmvault.server.accounts import Principal, Role

SESSION_COOKIE = "vmvault_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Unauthorized(VmvaultError):
    code = "unauthorized"
    http_status = 401


class Forbidden(VmvaultError):
    code = "forbidden"
    http_status = 403


def principal_of(request: Request) -> Principal | None:
    """The caller, from ``Authorization: Bearer`` or the session cookie; None if neither."""
    from vmvault.server.state import ServerState

    state: ServerState = request.app.state.server
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        return state.accounts.authenticate(secret.strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return state.accounts.session_principal(cookie)
    return None


def require(role: Role) -> Callable[[Request], Principal]:
    def dependency(request: Request) -> Principal:
        principal = principal_of(request)
        request.state.principal = principal
        if principal is None:
            raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
        if principal.csrf is not None and request.method not in SAFE_METHODS:
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent, principal.csrf):
                raise Forbidden("missing or wrong X-CSRF-Token for a session request")
        if not principal.may(role):
            raise Forbidden(
                f"this needs the {role.name} role; {principal.name} is a {principal.role.name}"
            )
        return principal

    dependency.__name__ = f"require_{role.name}"
    return dependency
