"""What every dashboard page is made with: the templates and their filters, ``render``
(the security headers, the viewer's role for the navigation and buttons), and the pages
that say something went wrong (not found, an address's value the page cannot use)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from vmvault import __version__
from vmvault.errors import VmvaultError
from vmvault.server.accounts import Principal, Role
from vmvault.server.auth import principal_of
from vmvault.units import (
    exact_duration,
    human_bytes,
    human_duration,
    human_mb_rate,
    measured_duration,
)

HERE = Path(__file__).parent
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
NOTHING = "\N{EN DASH}"  # what a table shows for a missing value


def size(value: float | None) -> str:
    """A size as the CLI writes it (app.js's ``bytes`` writes the same), or a dash."""
    return NOTHING if value is None else human_bytes(value)


def duration(seconds: float | None) -> str:
    """A lag as people say it: 0 s, 42 min, 5.2 h, 3.1 days."""
    return NOTHING if seconds is None else human_duration(seconds)


def took(seconds: float | None) -> str:
    """A job's measured time: 0.26 s, 2.1 s, 42 min (see ``measured_duration``)."""
    return NOTHING if seconds is None else measured_duration(seconds)


def rpo(seconds: float | None) -> str:
    """An RPO as configured: 30 h, not '1.2 days' (see ``exact_duration``)."""
    return NOTHING if seconds is None else exact_duration(seconds)


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
    bytes=size,
    when=when,
    segment=segment,
    duration=duration,
    took=took,
    rpo=rpo,
    mb_rate=human_mb_rate,
    epoch=epoch,
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


def crumbs(path: str) -> list[tuple[str, str]]:
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


def page_viewer(request: Request) -> Principal | None:
    """Who is looking at a page that anybody may see (an error page): the session's
    principal, or None (logged out; a bearer token opens no page, see ``session``)."""
    try:
        principal = principal_of(request)
    except VmvaultError:  # a throttled token: the page is the same for everybody
        return None
    return principal if principal is not None and principal.csrf is not None else None


def missing_page(request: Request) -> Response:
    """The 404 page for an address that is no page of the dashboard (the API's unknown
    routes answer its JSON error instead). Logged out, it has no navigation: nothing of the
    site is shown before a login."""
    message = f"there is no page at {request.url.path}"
    return render(
        request, "missing.html", page_viewer(request), 404, title="Not found", message=message
    )


def bad_value_page(request: Request, errors: Sequence[Mapping[str, Any]]) -> Response:
    """The 400 page for a page's address (or form) with a value it cannot use, such as
    ``/jobs?offset=abc``: each value named with what is wrong (the API answers its JSON
    error for the same)."""
    problems = []
    for error in errors:
        name = ".".join(str(part) for part in error["loc"][1:]) or str(error["loc"][0])
        given = error.get("input")
        shown = f" {str(given)[:100]!r}" if isinstance(given, str | int | float) else ""
        problems.append(f"{name}{shown}: {error['msg']}")
    message = "this address has a value the page cannot use: " + "; ".join(problems)
    return render(
        request,
        "missing.html",
        page_viewer(request),
        400,
        title="Cannot show this",
        message=message[:2000],
    )
