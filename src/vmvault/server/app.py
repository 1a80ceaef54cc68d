"""The FastAPI application: API, metrics, login, dashboard; error shapes; the audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vmvault import __version__
from vmvault.errors import VmvaultError
from vmvault.server.accounts import Principal, Role
from vmvault.server.auth import SAFE_METHODS, Unauthorized, require
from vmvault.server.state import ServerConfig, ServerState

# Paths whose writes the middleware leaves alone: login and logout audit themselves (they
# know who, the middleware does not).
UNAUDITED = ("/login", "/logout")


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def create_app(config: ServerConfig, state: ServerState | None = None) -> FastAPI:
    """The app for ``config``; ``state`` may be given (tests share one across apps)."""
    server = state or ServerState(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.start()
        try:
            yield
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

    @app.exception_handler(VmvaultError)
    async def vmvault_error(_: Request, exc: VmvaultError) -> JSONResponse:
        return _error(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "invalid_request", "; ".join(problems)[:2000])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.middleware("http")
    async def audit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.method not in SAFE_METHODS and not request.url.path.startswith(UNAUDITED):
            principal: Principal | None = getattr(request.state, "principal", None)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            server.accounts.audit(
                principal,
                f"{request.method} {request.url.path}",
                target,
                response.status_code,
                request.client.host if request.client else "",
            )
        return response

    from vmvault.server.api import router

    app.include_router(router)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics(_: Principal = Depends(require(Role.reader))) -> Response:
        """Prometheus text format: jobs by state, points and last backup per VM, alerts."""
        from vmvault.server.metrics import render

        body, content_type = render(server)
        return Response(body, media_type=content_type)

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_: Principal = Depends(require(Role.reader))) -> JSONResponse:
        return JSONResponse(app.openapi())

    from vmvault.server.dashboard import mount

    mount(app, server)
    return app


__all__ = ["Unauthorized", "create_app"]
