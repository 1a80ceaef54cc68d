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
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from vmvault.errors import NotFound, UsageError, VmvaultError
from vmvault.model.jobs import JobState
from vmvault.reports.monthly import month_span, previous_month
from vmvault.server.accounts import Principal, RefusalLog
from vmvault.server.api import admin, files, jobs, planning, points, reports, vault, vms
from vmvault.server.auth import (
    SESSION_COOKIE,
    Forbidden,
    Throttle,
    principal_of,
    remote_address,
    same_origin,
)
from vmvault.server.pages import (
    HERE,
    NOTHING,
    LoginFirst,
    PageMissing,
    bounded,
    crumbs,
    local_path,
    render,
)
from vmvault.server.state import ServerState

PAGE_SIZE = 50
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
        except NotFound:  # not in the inventory: a page still, if the vault has points
            vm = outside_inventory(name)
            if vm is None:
                raise PageMissing(principal, no_such_vm(name)) from None
        listing = points.points_page(server, name, bounded(offset), PAGE_SIZE)
        return render(request, "vm.html", principal, title=name, nav="fleet", vm=vm, points=listing)

    def no_such_vm(name: str) -> str:
        """The 404 page's message: every VM that has a page, those the inventory names and
        those only the vault's points name (backed up from the command line)."""
        known = [vm.name for vm in server.inventory().vms]
        known += sorted({p["vm"] for p in server.points()} - set(known))
        return f"no VM named {name!r} (known: {', '.join(known) or 'none'})"

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
                    "protected": None,  # no inventory entry says: "not in the inventory"
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
            # Not in the inventory: restored as a new VM only (in place needs its disks).
            in_inventory=any(vm.name == point["vm"] for vm in server.inventory().vms),
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
            crumbs=crumbs(listing["path"]),
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
        return reports_view(request, session(request))

    def reports_view(
        request: Request, principal: Principal, error: str = "", status: int = 200
    ) -> Response:
        summary = reports.report_summary(server, principal)
        now = datetime.now(UTC)
        return render(
            request,
            "reports.html",
            principal,
            status,
            title="Reports",
            nav="reports",
            summary=summary,
            rows=per_vm_rows(summary),
            month=previous_month(now),
            this_month=now.strftime("%Y-%m"),
            error=error,
        )

    @app.get("/reports/monthly", include_in_schema=False)
    def monthly_report(request: Request, month: str = "", format: str = "csv") -> Response:
        """The monthly report's file (last month's without ``month``, as the API's), or the
        reports page saying what was wrong with the month or format asked for (the API
        would answer its JSON error)."""
        principal = session(request)
        month, format = month[:20] or previous_month(datetime.now(UTC)), format[:20]
        try:
            month_span(month)
            if month > datetime.now(UTC).strftime("%Y-%m"):
                raise UsageError(f"month: {month} has not begun yet")
            if format not in ("csv", "pdf"):
                raise UsageError(f"format: {format!r} is neither csv nor pdf")
        except UsageError as exc:
            return reports_view(request, principal, exc.message, 400)
        return reports.report_monthly(server, principal, month, "pdf" if format == "pdf" else "csv")

    def per_vm_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
        """The reports page's table: each VM's protection with its backups' figures (and
        the last good backup of a VM the inventory does not name, from its points)."""
        status = {vm["vm"]: vm["status"] for vm in summary["vms"]}
        empty = {"backups": 0, "duration": None, "throughput": None, "last_good": None}
        empty |= {"success_rate": None, "change_rate": None}
        return [
            {"vm": name, "status": status.get(name), **summary["per_vm"].get(name, empty)}
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
