"""The FastAPI application: API, metrics, login, dashboard; error shapes; and the gate in
front of them all (auth before a write's body, body caps, the audit log)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import unquote_plus

import anyio
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmvault import __version__
from vmvault.errors import VmvaultError
from vmvault.server.accounts import Principal, RefusalLog, Role
from vmvault.server.api import router
from vmvault.server.auth import (
    PRE_AUTHENTICATED,
    SAFE_METHODS,
    Throttle,
    TooManyRequests,
    Unauthorized,
    principal_of,
    refusal,
    remote_address,
    require,
)
from vmvault.server.dashboard import mount
from vmvault.server.metrics import render
from vmvault.server.pages import bad_value_page, missing_page
from vmvault.server.state import ServerConfig, ServerState

MiB = 1 << 20
BODY_LIMIT = 1 * MiB  # every request body, unless BODY_LIMITS says otherwise
# The one bigger body: a whole inventory file (up to 10 million characters) as a JSON string.
BODY_LIMITS = {("PUT", "/api/v1/inventory"): 16 * MiB}
# Writes the gate lets through unauthenticated and does not audit: logging in and out is
# anonymous by nature, and these routes audit themselves (they know who).
SELF_AUDITED = frozenset({"/login", "/logout"})
# Query parameters whose names contain one of these have their values kept out of the audit
# log and the access log. Tokens are never taken from a query string; a client may still
# put one there by mistake.
SECRET_WORDS = (
    "token",
    "password",
    "passwd",
    "secret",
    "csrf",
    "session",
    "auth",
    "key",
    "credential",
    "signature",
)
REDACTED = "[redacted]"
log = logging.getLogger(__name__)


def redact_query(query: str) -> str:
    """``query`` (as sent, percent-encoded) with the values of secret-named parameters
    replaced by ``[redacted]``; everything else is kept as it was."""
    pairs = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        if equals and any(word in unquote_plus(name).lower() for word in SECRET_WORDS):
            pair = f"{name}={REDACTED}"
        pairs.append(pair)
    return "&".join(pairs)


def redact_target(target: str) -> str:
    """A path with its query string, redacted (see ``redact_query``)."""
    path, question, query = target.partition("?")
    return path + question + redact_query(query) if question else target


class _RedactAccessLog(logging.Filter):
    """uvicorn's access log: a line for what changes something or went wrong, not for the
    successful reads an open dashboard page makes every second (each GET or HEAD answered
    2xx or 304 is left out unless the log is at DEBUG). A line carries the request's path
    with its query string: the values of secret-named parameters are redacted first."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.args, tuple):
            return True
        # uvicorn's arguments: client address, method, path, HTTP version, status code
        routine = len(record.args) == 5 and _routine_read(record.args[1], record.args[4])
        if routine and not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.args = tuple(
            redact_target(arg) if isinstance(arg, str) and "?" in arg else arg
            for arg in record.args
        )
        return True


def _routine_read(method: object, status: object) -> bool:
    return (
        method in ("GET", "HEAD")
        and isinstance(status, int)
        and (200 <= status < 300 or status == 304)
    )


ACCESS_LOG_REDACTION = _RedactAccessLog()


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    if status == 401:
        challenge = 'Bearer error="invalid_token"' if code == "invalid_token" else "Bearer"
        headers = {**(headers or {}), "WWW-Authenticate": challenge}
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


def error_response(exc: VmvaultError) -> JSONResponse:
    """The JSON error of ``exc``; a throttled caller is told when to come back."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
    return _error(exc.http_status, exc.code, exc.message, headers)


def is_api_path(path: str) -> bool:
    """Whether ``path`` is the API's (JSON answers, errors too) rather than the dashboard's."""
    return path == "/api" or path.startswith("/api/") or path == "/metrics"


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


class BodyTooLarge(StarletteHTTPException):
    """Raised from the gate's ``receive`` the moment a body passes its route's cap: the
    route stops reading, and the app answers 413 (an HTTPException passes through FastAPI's
    body parsing unchanged)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is larger than {limit // MiB} MiB, the most this route takes"
        )


class Gate:
    """The outermost middleware, pure ASGI so that it sees a body as it streams in.

    - A write (POST, PUT, PATCH, DELETE; not the login form) is authenticated from its
      headers before a byte of its body is read: without a valid token or session it is
      refused at once (401, or 429 while its address is throttled), so an anonymous client
      cannot make the server read, buffer and parse a body.
    - Every body is capped (``BODY_LIMIT``, ``BODY_LIMITS``): a Content-Length above the cap
      is refused before reading, and the bytes received are counted as they come, so a body
      without a Content-Length (chunked) or with a false one is stopped at the cap too (413).
    - Every write is audited as it is answered, its query's secrets redacted; anonymous
      refusals go through the ``RefusalLog`` (one row per address and minute, with a count).
    """

    def __init__(self, app: ASGIApp, server: ServerState, refusals: RefusalLog) -> None:
        self.app, self.server, self.refusals = app, server, refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        request = Request(scope)
        limit = BODY_LIMITS.get((request.method, request.url.path), BODY_LIMIT)
        status = 0  # of the response sent
        received = 0
        overflow = False  # the body passed the cap
        replaced = False  # the app's own answer to the overflow is dropped for the 413

        async def counted() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise BodyTooLarge(limit)
            return message

        async def answer(message: Message) -> None:
            nonlocal status, replaced
            if message["type"] == "http.response.start":
                if overflow and message["status"] != 413:
                    replaced = True  # e.g. a parser that turned the overflow into a 400
                if not replaced:
                    status = message["status"]
                    # Written before the client hears the outcome, as a log of record is.
                    await self._audit(request, status, answered_here=False)
            if not replaced:
                await send(message)

        refusal = await self._refuse_early(request, limit)
        if refusal is None:
            try:
                await self.app(scope, counted, answer)
            except Exception:
                if not overflow or status:
                    raise
            if overflow and not status:
                refusal = _error(413, "body_too_large", str(BodyTooLarge(limit).detail))
        if refusal is not None:
            await self._audit(request, refusal.status_code, answered_here=True)
            await refusal(scope, receive, send)

    async def _refuse_early(self, request: Request, limit: int) -> Response | None:
        """The answer to give without running the app (nor reading the body), if any."""
        if request.method not in SAFE_METHODS and request.url.path not in SELF_AUDITED:
            try:
                principal = await anyio.to_thread.run_sync(principal_of, request)
            except VmvaultError as exc:  # the address is throttled
                return error_response(exc)
            if principal is None:
                return error_response(refusal(request))
            request.scope["state"][PRE_AUTHENTICATED] = principal
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                return _error(400, "bad_input", "Content-Length is not a number of bytes")
            if len(declared) > 15 or int(declared) > limit:  # no 4300-digit int() either
                return _error(413, "body_too_large", str(BodyTooLarge(limit).detail))
        return None

    async def _audit(self, request: Request, status: int, *, answered_here: bool) -> None:
        """Record a write (reads are not audited) and its answer's status."""
        path = request.url.path
        if request.method in SAFE_METHODS or (path in SELF_AUDITED and not answered_here):
            return
        state = request.scope["state"]
        principal: Principal | None = state.get("principal") or state.get(PRE_AUTHENTICATED)
        query = request.url.query
        target = path + (f"?{redact_query(query)}" if query else "")
        action = f"{request.method} {path}"
        remote = remote_address(request)
        if principal is None:
            await anyio.to_thread.run_sync(self.refusals.refused, action, target, status, remote)
        else:
            audit = self.server.accounts.audit
            await anyio.to_thread.run_sync(audit, principal, action, target, status, remote)


def create_app(config: ServerConfig, state: ServerState | None = None) -> FastAPI:
    """The app for ``config``; ``state`` may be given (tests share one across apps)."""
    server = state or ServerState(config)
    refusals = RefusalLog(server.accounts)

    async def write_refusal_counts() -> None:
        while True:
            await asyncio.sleep(1)
            try:
                await anyio.to_thread.run_sync(refusals.flush)
            except Exception:  # the catalog may be briefly unreachable: try again next second
                log.exception("could not write the counts of refused requests to the audit log")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.start()
        logging.getLogger("uvicorn.access").addFilter(ACCESS_LOG_REDACTION)  # once per logger
        writer = asyncio.create_task(write_refusal_counts())
        try:
            yield
        finally:
            writer.cancel()
            with suppress(asyncio.CancelledError):
                await writer
            try:
                refusals.flush()
            finally:
                server.stop()

    app = FastAPI(
        title="vmvault",
        version=__version__,
        description="Backups of VM disks: VMs, jobs, recovery points, restores, planner, cost.",
        # Served below behind a reader token: only health and the login page are public.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = server
    app.state.throttle = Throttle()
    app.state.refusals = refusals
    app.add_middleware(Gate, server=server, refusals=refusals)

    @app.exception_handler(VmvaultError)
    async def vmvault_error(_: Request, exc: VmvaultError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if not is_api_path(request.url.path):  # a dashboard page's address: a page says so
            return await anyio.to_thread.run_sync(bad_value_page, request, exc.errors())
        problems = [f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "invalid_request", "; ".join(problems)[:2000])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and not is_api_path(request.url.path):
            return missing_page(request)  # an unknown dashboard address: a page says so
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    app.include_router(router)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics(_: Principal = Depends(require(Role.reader))) -> Response:
        """Prometheus text format: jobs by state, points and last backup per VM, alerts."""
        body, content_type = render(server)
        return Response(body, media_type=content_type)

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_: Principal = Depends(require(Role.reader))) -> JSONResponse:
        return JSONResponse(app.openapi())

    mount(app, server)
    return app


__all__ = ["Unauthorized", "create_app"]
