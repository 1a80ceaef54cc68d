"""The dashboard: server-rendered pages (Jinja2) with a little JavaScript that calls the API.

Pages read through the same functions as the API; actions (back up now, restore) are API
calls made by the page with the session cookie and its CSRF token. Everything it needs is
served from ``static/``: no CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from vmvault import __version__
from vmvault.server.accounts import Principal
from vmvault.server.auth import SESSION_COOKIE, principal_of
from vmvault.server.state import ServerState

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def mount(app: FastAPI, server: ServerState) -> None:
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(request: Request, name: str, principal: Principal, **context: Any) -> Response:
        return templates.TemplateResponse(
            request,
            name,
            {"user": principal, "csrf": principal.csrf or "", "version": __version__, **context},
        )

    def session(request: Request) -> Principal | None:
        principal = principal_of(request)
        return principal if principal is not None and principal.csrf is not None else None

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, error: str = "") -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"error": error[:200], "version": __version__}
        )

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: str = Form(..., max_length=200)) -> Response:
        principal = server.accounts.authenticate(token.strip())
        remote = request.client.host if request.client else ""
        server.accounts.audit(principal, "POST /login", "/login", 303 if principal else 401, remote)
        if principal is None:
            return templates.TemplateResponse(
                request,
                "login.html",
                {"error": "That token is not valid.", "version": __version__},
                status_code=401,
            )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            server.accounts.open_session(principal),
            httponly=True,
            samesite="strict",
            secure=server.config.secure_cookies,
            max_age=12 * 3600,
            path="/",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            server.accounts.close_session(cookie)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview(request: Request) -> Response:
        principal = session(request)
        if principal is None:
            return RedirectResponse("/login", status_code=303)
        return page(request, "fleet.html", principal, title="Fleet")
