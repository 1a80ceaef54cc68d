"""The dashboard: server-rendered pages (Jinja2) with a little JavaScript that calls the API.

Pages read through the same functions as the API (``vmvault.server.api``); what changes while
a page is open (the fleet, jobs) is drawn by ``static/app.js`` from the API, and actions
(back up now, verify, restore, cancel) are API calls made by the page with the session
cookie and its CSRF token. Everything it needs is served from ``static/``: no CDN.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from vmvault import __version__
from vmvault.errors import NotFound, VmvaultError
from vmvault.model.jobs import JobState
from vmvault.reports.monthly import previous_month
from vmvault.server.accounts import Principal, RefusalLog, Role
from vmvault.server.api import admin, files, jobs, planning, points, reports, vault, vms
from vmvault.server.auth import (
    SESSION_COOKIE,
    Forbidden,
    Throttle,
    principal_of,
    remote_address,
    same_origin,
)
from vmvault.server.state import ServerState
from vmvault.units import human_bytes, human_duration, human_mb_rate

HERE = Path(__file__).parent
PAGE_SIZE = 50
# Pages load scripts, styles and images from this server only and cannot be framed: an
# escaping mistake somewhere cannot pull in or run code from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
T = TypeVar("T")
# What the login page may say, by code: ``/login?error=CODE`` shows one of these or nothing,
# never text from the address (a link could otherwise put any message on this server's page).
LOGIN_MESSAGES = {
    "invalid": "That token is not valid.",
    "session": "Your session has ended: log in again.",
    "origin": "This form was sent from another site: log in from this server's own page.",
}
JOB_ID = re.compile(r"[0-9]{1,10}")  # ASCII digits: str.isdigit() also takes '²', int() not
# The catalog's job ids are Integer columns: int4 on PostgreSQL, where a bigger number in a
# query is an error (a 500), not a miss.
MAX_ROW_ID = 2**31 - 1
JOB_STATES = tuple(s.value for s in JobState)  # the jobs page's state filter
NOTHING = "\N{EN DASH}"  # what a table shows for a missing value


def size(value: float | None) -> str:
    """A size as the CLI writes it (app.js's ``bytes`` writes the same), or a dash."""
    return NOTHING if value is None else human_bytes(value)


def duration(seconds: float | None) -> str:
    """A lag as people say it: 0 s, 42 min, 5.2 h, 3.1 days."""
    return NOTHING if seconds is None else human_duration(seconds)


def when(value: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC' (app.js's ``when`` writes the same)."""
    if not value:
        return NOTHING
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def segment(value: object) -> str:
    """A value as one URL path segment (names and ids go into links)."""
    return quote(str(value), safe="")


def epoch(value: float | None) -> str:
    """POSIX seconds (a file's times in a point) written as ``when`` writes ISO times."""
    return NOTHING if value is None else when(datetime.fromtimestamp(value, UTC).isoformat())


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(
    bytes=size, when=when, segment=segment, duration=duration, mb_rate=human_mb_rate, epoch=epoch
)


class LoginFirst(Exception):
    """A page was asked for without a session: the browser goes to the login page."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


class PageMissing(Exception):
    """A page about something that is not there (a VM, a point, a job): the 404 page; or
    that its address cannot name (a point prefix several ids share): a 400 page."""

    def __init__(self, principal: Principal | None, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.principal, self.message, self.status = principal, message, status


def local_path(target: str) -> str:
    """``target`` if it is a path on this server, else '/': the login page's ``next`` can
    only lead back here, never to another site."""
    ok = target.startswith("/") and not target.startswith(("//", "/\\")) and target.isprintable()
    return target if ok else "/"


def _crumbs(path: str) -> list[tuple[str, str]]:
    """A path's components, each with the path up to it (the file browser's breadcrumbs)."""
    crumbs, walked = [], ""
    for part in [p for p in path.split("/") if p]:
        walked += "/" + part
        crumbs.append((part, walked))
    return crumbs


def bounded(offset: int) -> int:
    """A page's offset within what the API accepts (pages call its functions directly)."""
    return min(max(offset, 0), 10_000_000)


def _cost_on(request: Request) -> bool:
    """Whether the nav shows the cost page (no server, an unreadable inventory: it does)."""
    server = getattr(request.app.state, "server", None)
    try:
        return server is None or bool(server.inventory().pricing.enabled)
    except VmvaultError:
        return True


def render(
    request: Request, name: str, principal: Principal | None, status: int = 200, **context: Any
) -> Response:
    response = templates.TemplateResponse(
        request,
        name,
        {
            "user": principal,
            "csrf": (principal.csrf or "") if principal else "",
            "can_operate": principal is not None and principal.may(Role.operator),
            "can_admin": principal is not None and principal.may(Role.admin),
            "version": __version__,
            "cost_on": _cost_on(request),
            **context,
        },
        status_code=status,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def missing_page(request: Request) -> Response:
    """The 404 page for an address that is no page of the dashboard (the API's unknown
    routes answer its JSON error instead)."""
    try:
        principal = principal_of(request)
    except VmvaultError:  # a throttled token: the page is the same for everybody
        principal = None
    if principal is not None and principal.csrf is None:
        principal = None  # a bearer token opens no page (see ``session``)
    message = f"there is no page at {request.url.path}"
    return render(request, "missing.html", principal, 404, title="Not found", message=message)


def mount(app: FastAPI, server: ServerState) -> None:
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def session(request: Request) -> Principal:
        """The page's viewer, logged in through the login page (a bearer token opens the
        API, not the pages: they need the session's CSRF secret for their actions)."""
        principal = principal_of(request)
        if principal is None or principal.csrf is None:
            query = f"?{request.url.query}" if request.url.query else ""
            raise LoginFirst(request.url.path + query)
        return principal

    def found(principal: Principal, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, with the API's 'not found' (and 'bad input': an ambiguous point
        prefix) turned into a page saying so."""
        try:
            return call(*args)
        except VmvaultError as exc:
            if exc.http_status in (400, 404):
                raise PageMissing(principal, exc.message, exc.http_status) from exc
            raise

    @app.exception_handler(LoginFirst)
    async def login_first(_: Request, exc: LoginFirst) -> Response:
        target = "/login" if exc.target == "/" else "/login?" + urlencode({"next": exc.target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(PageMissing)
    async def page_missing(request: Request, exc: PageMissing) -> Response:
        title = "Not found" if exc.status == 404 else "Cannot show this"
        return render(
            request, "missing.html", exc.principal, exc.status, title=title, message=exc.message
        )

    # -- login -----------------------------------------------------------------------------

    throttle: Throttle = app.state.throttle
    refusals: RefusalLog = app.state.refusals

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(
        request: Request, error: str = "", target: str = Query("/", alias="next")
    ) -> Response:
        message = LOGIN_MESSAGES.get(error, "")
        return render(request, "login.html", None, error=message, next=local_path(target))

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        token: str = Form(..., max_length=200),
        target: str = Form("/", alias="next", max_length=2000),
    ) -> Response:
        remote = remote_address(request)

        def refuse(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
            refusals.refused("POST /login", "/login", status, remote)
            page = render(
                request, "login.html", None, status, error=message, next=local_path(target)
            )
            page.headers.update(headers or {})
            return page

        # Login CSRF: another site's page must not log a browser in (with the attacker's
        # token, so that what the victim does next lands in the attacker's account).
        if not same_origin(request):
            return refuse(403, LOGIN_MESSAGES["origin"])
        if wait := throttle.blocked_for(remote):  # checked before the token: no guessing on
            message = f"Too many failed attempts from your address: try again in {wait} s."
            return refuse(429, message, {"Retry-After": str(wait)})
        principal = server.accounts.authenticate(token.strip())
        if principal is None:
            throttle.failure(remote)
            return refuse(401, LOGIN_MESSAGES["invalid"])
        server.accounts.audit(principal, "POST /login", "/login", 303, remote)
        response = RedirectResponse(local_path(target), status_code=303)
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
        if not same_origin(request):  # another site's page must not end the session either
            raise Forbidden("a logout from another site (Origin/Referer) is refused")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            # Audited here, while the session still names who is leaving.
            who = server.accounts.session_principal(cookie)
            remote = remote_address(request)
            server.accounts.audit(who, "POST /logout", "/logout", 303, remote)
            server.accounts.close_session(cookie)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- pages -----------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview(request: Request) -> Response:
        principal = session(request)
        damaged = sorted(server.damaged_points().items())
        known = {vm.name for vm in server.inventory().vms}
        outside = sorted({p["vm"] for p in server.points()} - known)
        return render(
            request,
            "fleet.html",
            principal,
            title="Fleet",
            nav="fleet",
            damaged=damaged,
            outside=outside,
            summary=reports.report_summary(server, principal),
        )

    @app.get("/vms/{name}", response_class=HTMLResponse, include_in_schema=False)
    def vm_page(request: Request, name: str, offset: int = 0) -> Response:
        principal = session(request)
        vm: dict[str, Any] | None
        try:
            vm = vms.get_vm(name, server, principal)
        except NotFound as exc:  # not in the inventory: a page still, if the vault has points
            vm = outside_inventory(name)
            if vm is None:
                raise PageMissing(principal, exc.message) from None
        listing = points.points_page(server, name, bounded(offset), PAGE_SIZE)
        return render(request, "vm.html", principal, title=name, nav="fleet", vm=vm, points=listing)

    def outside_inventory(name: str) -> dict[str, Any] | None:
        """A VM the vault has points of but the inventory does not name: what its points say."""
        mine = [p for p in server.points() if p["vm"] == name]
        if not mine:
            return None
        newest = mine[-1]
        return {
            "name": name,
            "in_inventory": False,
            "host": NOTHING,
            "state": "not in the inventory",
            "policy": None,
            "protection": None,
            "last_backup": newest.get("completed") or newest["created"],
            "next_run": None,
            "active_job": None,
            "instant_restore": None,
            "disks": [
                {
                    "name": d["name"],
                    "role": d.get("role") or NOTHING,
                    "format": d.get("format"),
                    "pool": None,
                    "protected": True,
                }
                for d in newest["disks"]
            ],
        }

    @app.get("/points", response_class=HTMLResponse, include_in_schema=False)
    def all_points_page(request: Request, offset: int = 0) -> Response:
        principal = session(request)
        listing = points.points_page(server, None, bounded(offset), PAGE_SIZE)
        return render(
            request, "points.html", principal, title="Recovery points", nav="points", points=listing
        )

    @app.get("/points/{point_id}", response_class=HTMLResponse, include_in_schema=False)
    def point_page(request: Request, point_id: str) -> Response:
        principal = session(request)
        point = found(principal, points.get_point, point_id, server, principal)
        root = server.config.restore_root
        return render(
            request,
            "point.html",
            principal,
            title=f"Point {point['id']}",  # the whole id, also when the address gave a prefix
            nav="fleet",
            point=point,
            restore_root=str(Path(root).resolve()) if root else None,
        )

    @app.get("/points/{point_id}/files", response_class=HTMLResponse, include_in_schema=False)
    def files_page(request: Request, point_id: str, path: str = "/", disk: str = "") -> Response:
        principal = session(request)
        point = found(principal, points.get_point, point_id, server, principal)
        chosen = disk[:255] or point["detail"]["disks"][0]["name"]
        listing = found(
            principal, files.list_point_files, point["id"], server, principal, path[:4096], chosen
        )
        return render(
            request,
            "files.html",
            principal,
            title=f"Files of point {point['id']}",
            nav="fleet",
            point=point,
            disk=chosen,
            disks=[d["name"] for d in point["detail"]["disks"]],
            listing=listing,
            crumbs=_crumbs(listing["path"]),
        )

    @app.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    def jobs_page(request: Request, offset: int = 0, vm: str = "", state: str = "") -> Response:
        principal = session(request)
        vm, state = vm[:255], state if state in JOB_STATES else ""
        filters = {**({"vm": vm} if vm else {}), **({"state": state} if state else {})}
        query = {"limit": PAGE_SIZE, "offset": bounded(offset), **filters}
        return render(
            request,
            "jobs.html",
            principal,
            title="Jobs",
            nav="jobs",
            vm=vm,
            state=state,
            states=JOB_STATES,
            offset=query["offset"],
            source="/api/v1/jobs?" + urlencode(query),
        )

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, job_id: str) -> Response:
        principal = session(request)
        if not JOB_ID.fullmatch(job_id) or int(job_id) > MAX_ROW_ID:
            raise PageMissing(principal, f"no job {job_id!r}")
        job = found(principal, jobs.get_job, int(job_id), server, principal)
        return render(request, "job.html", principal, title=f"Job {job_id}", nav="jobs", job=job)

    @app.get("/plan", response_class=HTMLResponse, include_in_schema=False)
    def plan_page(request: Request, day: str = "") -> Response:
        principal = session(request)
        chosen = day[:10] or None
        try:
            plan = planning.plan(server, principal, chosen)
        except VmvaultError as exc:
            if exc.http_status not in (400, 422):  # a day not understood or out of range
                raise
            plan, chosen = planning.plan(server, principal, None), None
            error = exc.message
        else:
            error = ""
        chart = "/api/v1/plan/chart.svg" + (f"?{urlencode({'day': chosen})}" if chosen else "")
        return render(
            request,
            "plan.html",
            principal,
            title="Planner",
            nav="plan",
            plan=plan,
            chart=chart,
            error=error,
        )

    @app.get("/cost", response_class=HTMLResponse, include_in_schema=False)
    def cost_page(request: Request) -> Response:
        principal = session(request)
        report = found(principal, planning.cost, server, principal)
        return render(request, "cost.html", principal, title="Cost", nav="cost", report=report)

    @app.get("/reports", response_class=HTMLResponse, include_in_schema=False)
    def reports_page(request: Request) -> Response:
        principal = session(request)
        summary = reports.report_summary(server, principal)
        last_month = previous_month(datetime.now(UTC))
        return render(
            request,
            "reports.html",
            principal,
            title="Reports",
            nav="reports",
            summary=summary,
            rows=per_vm_rows(summary),
            month=last_month,
        )

    def per_vm_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
        """The reports page's table: each VM's protection with its backups' figures."""
        status = {vm["vm"]: vm for vm in summary["vms"]}
        empty = {"backups": 0, "duration": None, "throughput": None}
        empty |= {"success_rate": None, "change_rate": None}
        return [
            {
                "vm": name,
                "status": status[name]["status"] if name in status else None,
                "last_good": status[name]["last_good"] if name in status else None,
                **summary["per_vm"].get(name, empty),
            }
            for name in sorted(status.keys() | summary["per_vm"].keys())
        ]

    @app.get("/copies", response_class=HTMLResponse, include_in_schema=False)
    def copies_page(request: Request) -> Response:
        principal = session(request)
        copies = vault.vault_copies(server, principal)
        return render(
            request, "copies.html", principal, title="Copies", nav="copies", copies=copies
        )

    @app.get("/alerts", response_class=HTMLResponse, include_in_schema=False)
    def alerts_page(request: Request, offset: int = 0) -> Response:
        principal = session(request)
        alerts = admin.alerts(server, principal, bounded(offset), PAGE_SIZE)
        return render(
            request, "alerts.html", principal, title="Alerts", nav="alerts", alerts=alerts
        )
