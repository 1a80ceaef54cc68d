"""Who is calling, and may they: bearer tokens for the API, session cookies for the dashboard.

Every route declares the least role it needs with ``Depends(require(Role.x))``. A request with
a session cookie that changes something must also echo the session's CSRF secret in the
``X-CSRF-Token`` header (the dashboard's pages carry it), and come from a page of this server
(its ``Origin``, or its ``Referer``), so another site cannot make a logged-in browser act.

Failed token checks and failed logins are counted per remote address (``Throttle``): after
five within a minute the address is refused with 429 for a while, longer each time.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Request

from vmvault.errors import VmvaultError
from vmvault.server.accounts import Principal, Role
from vmvault.server.state import ServerState

SESSION_COOKIE = "vmvault_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The scope["state"] key under which the app's outer middleware leaves the caller it
# authenticated before reading a write's body (so the route does not look it up again).
PRE_AUTHENTICATED = "vmvault.pre_authenticated"
UNAUTHENTICATED = "authentication required: send 'Authorization: Bearer <token>'"


class Unauthorized(VmvaultError):
    code = "unauthorized"
    http_status = 401


class InvalidToken(Unauthorized):
    """A bearer token was sent, and it is no token of this server (or a revoked one)."""

    code = "invalid_token"  # RFC 6750's name, also in the answer's WWW-Authenticate


class Forbidden(VmvaultError):
    code = "forbidden"
    http_status = 403


class TooManyRequests(VmvaultError):
    """The caller's address failed to authenticate too often: wait ``retry_after`` seconds."""

    code = "too_many_requests"
    http_status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed authentications from this address: try again in {retry_after} s"
        )
        self.retry_after = retry_after


def address_key(host: str) -> str:
    """The throttle's key for a remote address: an IPv6 address by its /64 (a host or a site
    is given a whole /64, so rotating the low bits must not escape a block), an IPv4-mapped
    one as its IPv4 address, anything else (a Unix socket, a test client) as it is."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Failures:
    recent: deque[float] = field(default_factory=deque)  # times of failures in the window
    blocks: int = 0  # blocks imposed since the address was last forgiven
    blocked_until: float = 0.0
    last_failure: float = 0.0


class Throttle:
    """Failed authentications per remote address (see ``address_key``).

    ``limit`` failures within ``window`` seconds block the address for ``first_block``
    seconds, each further block twice as long as the one before, up to ``longest_block``;
    an address without a failure for ``forget_after`` seconds starts again from the first.
    At most ``max_addresses`` are remembered (the least recently failing are forgotten
    first), so a crowd of addresses cannot grow the server's memory without bound.
    Thread-safe: routes run in a thread pool.
    """

    def __init__(
        self,
        *,
        limit: int = 5,
        window: float = 60.0,
        first_block: float = 60.0,
        longest_block: float = 3600.0,
        forget_after: float = 86400.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window = limit, window
        self.first_block, self.longest_block = first_block, longest_block
        self.forget_after, self.max_addresses = forget_after, max_addresses
        self.clock = clock
        self._lock = threading.Lock()
        self._addresses: OrderedDict[str, _Failures] = OrderedDict()

    def blocked_for(self, address: str) -> int:
        """Whole seconds until ``address`` may try again; 0 if it may now."""
        with self._lock:
            record = self._addresses.get(address_key(address))
            left = record.blocked_until - self.clock() if record else 0.0
        return math.ceil(left) if left > 0 else 0

    def check(self, address: str) -> None:
        """Raise ``TooManyRequests`` while ``address`` is blocked."""
        if wait := self.blocked_for(address):
            raise TooManyRequests(wait)

    def failure(self, address: str) -> None:
        """Count a failed authentication from ``address``; the limit'th in a window blocks it."""
        now = self.clock()
        key = address_key(address)
        with self._lock:
            record = self._addresses.pop(key, None) or _Failures()
            self._addresses[key] = record  # most recently failing last
            while len(self._addresses) > self.max_addresses:
                self._addresses.popitem(last=False)
            if now - record.last_failure > self.forget_after:
                record.blocks = 0
            record.last_failure = now
            while record.recent and now - record.recent[0] > self.window:
                record.recent.popleft()
            record.recent.append(now)
            if len(record.recent) >= self.limit:
                record.recent.clear()
                record.blocks += 1
                length = min(self.first_block * 2 ** (record.blocks - 1), self.longest_block)
                record.blocked_until = now + length


def remote_address(request: Request) -> str:
    return request.client.host if request.client else ""


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from a page of another site: its
    ``Origin`` (or, without one, its ``Referer``) must name the host and port the request was
    sent to (its ``Host``). A request with neither header is not a browser acting for a page
    (browsers send ``Origin`` with every POST), so there is nothing to hold against it."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return True
    host = request.headers.get("host", "").lower()
    parts = urlsplit(claimed)  # "null" (a sandboxed or privacy-stripped origin) has no host
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc.lower() == host


def principal_of(request: Request) -> Principal | None:
    """The caller, from ``Authorization: Bearer`` or the session cookie; None if neither.

    A token that does not authenticate counts as a failure of the caller's address; while
    the address is blocked, tokens from it are refused (``TooManyRequests``) unchecked, the
    right one too, so guessing cannot go on at full speed. A token is never taken from the
    query string. Session cookies are not throttled: a browser sends its expired cookie with
    every poll of a page left open, and a cookie is 256 random bits no one guesses.
    """
    known = request.scope.get("state", {})
    if PRE_AUTHENTICATED in known:
        principal: Principal | None = known[PRE_AUTHENTICATED]
        return principal
    state: ServerState = request.app.state.server
    header = request.headers.get("authorization", "")
    if header:
        throttle: Throttle | None = getattr(request.app.state, "throttle", None)
        address = remote_address(request)
        if throttle is not None:
            throttle.check(address)
        scheme, _, secret = header.partition(" ")
        principal = None
        if scheme.lower() == "bearer" and secret.strip():
            principal = state.accounts.authenticate(secret.strip())
        if principal is None and throttle is not None:
            throttle.failure(address)
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return state.accounts.session_principal(cookie)
    return None


def refusal(request: Request) -> Unauthorized:
    """Why a request ``principal_of`` found no caller for is refused: the bearer token it
    sent is not valid, or it sent none (a session cookie that expired is none either)."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        return InvalidToken(
            "the token is not valid: this server does not know it, or it was revoked "
            "(`vmvault token list` shows the server's tokens)"
        )
    return Unauthorized(UNAUTHENTICATED)


def require(role: Role) -> Callable[[Request], Principal]:
    def dependency(request: Request) -> Principal:
        principal = principal_of(request)
        request.state.principal = principal
        if principal is None:
            raise refusal(request)
        if principal.csrf is not None and request.method not in SAFE_METHODS:
            if not same_origin(request):
                raise Forbidden("a session request from another site (Origin/Referer) is refused")
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
