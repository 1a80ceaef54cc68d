"""The server against hostile or careless clients: request bodies (auth before the body, a size
cap enforced while streaming), throttled failed logins and token checks with an aggregated
audit log, secrets in query strings, the login page's messages and cross-origin posts, plan
days out of range, and the dashboard's links. Most run on `vmvault serve` or the app through
Starlette's TestClient with a site of serverkit."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from support.serverkit import MiB, Served, Site, make_site, serving
from vmvault.server.app import create_app

# -- a real `vmvault serve` ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    site = make_site(tmp_path_factory.mktemp("hardening-served"), backup=False)
    with serving(site, site.root / "server.log", "--no-scheduler") as server:
        yield server


def _chunks(total: int, piece: bytes = b"x" * 65536) -> Iterator[bytes]:
    """A JSON body of about ``total`` bytes, sent chunked (no Content-Length)."""
    yield b'{"role": "reader", "name": "'
    for _ in range(total // len(piece)):
        yield piece
    yield b'"}'


# -- the app through the TestClient ------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return make_site(tmp_path_factory.mktemp("hardening"))


@pytest.fixture(scope="module")
def app(site: Site) -> Iterator[Any]:
    application = create_app(site.config)
    with TestClient(application):  # runs the lifespan: the server's state, its loops
        yield application


def _client(app: Any, address: str) -> TestClient:
    """A client at its own remote address: throttling and audit rows are per address."""
    return TestClient(app, client=(address, 40000), raise_server_exceptions=False)


def _login(app: Any, site: Site, role: str, address: str) -> tuple[TestClient, str]:
    """A browser-like client logged in with ``role``, and its session's CSRF token."""
    browser = _client(app, address)
    answer = browser.post("/login", data={"token": site.tokens[role]}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    page = browser.get("/").text
    return browser, page.split('name="csrf-token" content="')[1].split('"')[0]


def _audit(app: Any, site: Site) -> list[dict[str, Any]]:
    admin = _client(app, "127.0.0.1")
    return list(admin.get("/api/v1/audit?limit=500", headers=site.auth("admin")).json()["items"])


# -- 1. request bodies ------------------------------------------------------------------------


def test_unauthenticated_writes_are_refused_before_their_body_is_read(served: Served) -> None:
    # Headers announcing 500 kB, then only a few bytes: the answer must not wait for the rest.
    head = (
        "POST /api/v1/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"name": "')
        sock.settimeout(5)
        reply = b""
        try:
            while b'"}}' not in reply:  # the end of the JSON error
                reply += sock.recv(65536) or pytest.fail(f"connection closed: {reply!r}")
        except TimeoutError:
            pytest.fail("the server waited for the body of an unauthenticated request")
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert b'"code":"unauthorized"' in reply


def test_big_bodies_get_413_and_do_not_grow_the_server(served: Served) -> None:
    size = 32 * MiB
    before = served.peak_rss()
    url = served.url + "/api/v1/tokens"
    anonymous = httpx.post(url, content=_chunks(size), timeout=60)  # chunked: no length told
    assert anonymous.status_code == 401, anonymous.text
    admin = served.site.auth("admin")
    announced = httpx.post(url, content=b"x" * size, headers=admin, timeout=60)
    assert announced.status_code == 413, announced.text
    streamed = httpx.post(url, content=_chunks(size), headers=admin, timeout=60)
    assert streamed.status_code == 413, streamed.text
    error = streamed.json()["error"]
    assert error["code"] == "body_too_large" and "1 MiB" in error["message"], error
    grown = served.peak_rss() - before
    assert grown < 16 * MiB, f"the server's peak RSS grew by {grown / MiB:.0f} MiB"
    assert served.get("/api/v1/vms", "reader").status_code == 200  # still serving


def test_a_content_length_that_lies_does_not_bypass_the_cap(app: Any, site: Site) -> None:
    client = _client(app, "192.0.2.1")
    body = b'{"role": "reader", "name": "' + b"x" * (2 * MiB) + b'"}'
    headers = {**site.auth("admin"), "Content-Type": "application/json", "Content-Length": "40"}
    answer = client.post("/api/v1/tokens", content=body, headers=headers)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "body_too_large"
    # A length too long for int() to read is too big, not a crash.
    small = b'{"role": "reader", "name": "x"}'
    headers["Content-Length"] = "9" * 5000
    answer = client.post("/api/v1/tokens", content=small, headers=headers)
    assert answer.status_code == 413, answer.text


def test_the_inventory_may_be_bigger_than_other_bodies_but_is_capped_too(
    app: Any, site: Site
) -> None:
    client = _client(app, "192.0.2.2")
    admin = site.auth("admin")
    current = Path(site.config.inventory or "").read_text()
    padded = current + "\n# " + "x" * (3 * MiB) + "\n"
    try:
        fits = client.put("/api/v1/inventory", headers=admin, json={"toml": padded})
        assert fits.status_code == 200, fits.text[:300]
    finally:
        restored = client.put("/api/v1/inventory", headers=admin, json={"toml": current})
        assert restored.status_code == 200, restored.text
    huge = client.put(
        "/api/v1/inventory", headers=admin, json={"toml": current + "#" + "x" * (17 * MiB)}
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"
    assert Path(site.config.inventory or "").read_text() == current


# -- 2. throttling and the audit log -------------------------------------------------------------


def test_failed_token_checks_are_throttled_per_address(app: Any, site: Site) -> None:
    attacker = _client(app, "203.0.113.5")
    for attempt in range(5):
        wrong = {"Authorization": f"Bearer vmv_guess-{attempt}"}
        assert attacker.get("/api/v1/vms", headers=wrong).status_code == 401
    # Now even the right token is refused from that address, without being checked.
    blocked = attacker.get("/api/v1/vms", headers=site.auth("reader"))
    assert blocked.status_code == 429, blocked.text
    assert blocked.json()["error"]["code"] == "too_many_requests"
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    write = attacker.post("/api/v1/vms/web01/backup", headers=site.auth("operator"), json={})
    assert write.status_code == 429 and "retry-after" in write.headers
    # Another address is not affected, and neither are requests carrying no token at all.
    assert _client(app, "203.0.113.6").get("/api/v1/vms", headers=site.auth("reader")).is_success
    assert attacker.get("/api/v1/health").status_code == 200


def test_a_token_that_is_not_valid_is_told_apart_from_none(app: Any, site: Site) -> None:
    caller = _client(app, "203.0.113.9")
    wrong = {"Authorization": "Bearer vmv_not-a-token"}
    read = caller.get("/api/v1/vms", headers=wrong)  # refused by the route's dependency
    write = caller.post("/api/v1/tokens", headers=wrong, json={})  # by the gate, bodiless
    for answer in (read, write):
        assert answer.status_code == 401
        error = answer.json()["error"]
        assert error["code"] == "invalid_token"
        assert error["message"].startswith("the token is not valid: this server does not know")
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    # No token: none at all, an empty one, another scheme (four failures in all: not blocked)
    for answer in (
        caller.get("/api/v1/vms"),
        caller.post("/api/v1/tokens", json={}),
        caller.get("/api/v1/vms", headers={"Authorization": "Bearer "}),
        caller.get("/api/v1/vms", headers={"Authorization": "Basic eDp5"}),
    ):
        assert answer.status_code == 401
        error = answer.json()["error"]
        assert error["code"] == "unauthorized"
        assert error["message"].startswith("authentication required: send 'Authorization")
        assert answer.headers["www-authenticate"] == "Bearer"


def test_failed_writes_with_wrong_tokens_count_too(app: Any, site: Site) -> None:
    attacker = _client(app, "203.0.113.7")
    for attempt in range(5):
        wrong = {"Authorization": f"Bearer vmv_guess-{attempt}"}
        answer = attacker.post("/api/v1/tokens", headers=wrong, json={"name": "x", "role": "admin"})
        assert answer.status_code == 401
    answer = attacker.post("/api/v1/tokens", headers={"Authorization": "Bearer vmv_6"}, json={})
    assert answer.status_code == 429


def test_failed_logins_are_throttled(app: Any, site: Site) -> None:
    browser = _client(app, "203.0.113.8")
    for attempt in range(5):
        wrong = browser.post("/login", data={"token": f"vmv_guess-{attempt}"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
    right = browser.post("/login", data={"token": site.tokens["admin"]}, follow_redirects=False)
    assert right.status_code == 429, right.text[:300]
    assert int(right.headers["retry-after"]) >= 1
    assert "Too many failed attempts" in right.text
    assert "set-cookie" not in right.headers
    elsewhere = _client(app, "203.0.113.9")
    ok = elsewhere.post("/login", data={"token": site.tokens["admin"]}, follow_redirects=False)
    assert ok.status_code == 303


def test_the_back_off_grows_and_is_forgotten_after_a_quiet_while() -> None:
    from vmvault.server.auth import Throttle

    now = [1000.0]
    throttle = Throttle(clock=lambda: now[0])

    def fail_until_blocked() -> float:
        for _ in range(5):
            assert throttle.blocked_for("198.51.100.1") == 0
            throttle.failure("198.51.100.1")
        return throttle.blocked_for("198.51.100.1")

    windows = []
    for _ in range(8):
        windows.append(fail_until_blocked())
        now[0] += windows[-1]  # wait the block out
    assert windows[:4] == [60, 120, 240, 480], windows
    assert max(windows) == 3600  # capped at an hour
    assert throttle.blocked_for("198.51.100.2") == 0  # another address
    # Four failures, then a minute later one more: not five within a minute.
    for _ in range(4):
        throttle.failure("198.51.100.3")
    now[0] += 61
    throttle.failure("198.51.100.3")
    assert throttle.blocked_for("198.51.100.3") == 0
    # A day without failures: the next block starts small again.
    now[0] += 86400
    assert fail_until_blocked() == 60
    # An IPv6 host is one /64: rotating the low bits does not escape the block.
    for low in range(5):
        throttle.failure(f"2001:db8:1:2::{low + 1}")
    assert throttle.blocked_for("2001:db8:1:2:ffff::9") > 0
    assert throttle.blocked_for("2001:db8:1:3::1") == 0


def test_anonymous_refusals_are_one_audit_row_per_address_and_window(app: Any, site: Site) -> None:
    address = "198.51.100.77"
    stranger = _client(app, address)
    for _ in range(40):
        assert stranger.post("/api/v1/vms/web01/backup", json={}).status_code == 401
    for attempt in range(10):  # five refused logins, then five throttled ones
        assert stranger.post("/login", data={"token": f"vmv_{attempt}"}).status_code in (401, 429)

    def refused_from_address() -> tuple[int, list[dict[str, Any]]]:
        rows = [e for e in _audit(app, site) if e["remote"] == address]
        counts = [re.search(r"refused (\d+)", e["target"]) for e in rows]
        return sum(int(m.group(1)) if m else 1 for m in counts), rows

    deadline = time.monotonic() + 10
    total, rows = refused_from_address()
    while total < 50 and time.monotonic() < deadline:  # counts are written once a second
        time.sleep(0.3)
        total, rows = refused_from_address()
    assert len(rows) <= 2, rows  # one per minute-long window (two if the test straddles one)
    assert total == 50, rows
    assert all(e["actor"] == "anonymous" for e in rows)


# -- 3. secrets in query strings ------------------------------------------------------------------


def test_query_secrets_reach_neither_the_audit_log_nor_the_access_log(served: Served) -> None:
    site = served.site
    secrets = {"vmv_QuerySecret0123456789", "hunter2-Password", "sEcReT-value-42", "csrf-XYZ-987"}
    query = (
        "token=vmv_QuerySecret0123456789&password=hunter2-Password&client_secret=sEcReT-value-42"
        "&csrf=csrf-XYZ-987&vm=kept-value"
    )
    answer = httpx.post(
        f"{served.url}/api/v1/vms/nope/backup?{query}", headers=site.auth("operator"), json={}
    )
    assert answer.status_code == 404
    # A token is never taken from the query string, and is not written down either.
    reader = site.tokens["reader"]
    assert httpx.get(f"{served.url}/api/v1/vms?token={reader}").status_code == 401
    assert httpx.post(f"{served.url}/api/v1/vms/web01/backup?token={reader}").status_code == 401
    entries = served.get("/api/v1/audit?limit=500", "admin").json()["items"]
    mine = [e for e in entries if e["action"] == "POST /api/v1/vms/nope/backup"]
    assert mine and "vm=kept-value" in mine[0]["target"] and "token=" in mine[0]["target"]
    access_log = served.log.read_text(errors="replace")
    assert "?token=[redacted]&password=[redacted]&client_secret=[redacted]" in access_log
    written = str(entries) + access_log
    for secret in (*secrets, reader):
        assert secret not in written, secret


# -- 4. the login page ----------------------------------------------------------------------------


def test_the_login_page_shows_only_its_own_messages(app: Any) -> None:
    visitor = _client(app, "192.0.2.20")
    planted = visitor.get("/login", params={"error": "Call +1 555 0100 to restore your VMs"})
    assert planted.status_code == 200 and "555 0100" not in planted.text
    assert 'class="error"' not in planted.text
    ended = visitor.get("/login", params={"error": "session"})
    assert "Your session has ended" in ended.text


def test_cross_origin_logins_and_session_writes_are_refused(app: Any, site: Site) -> None:
    visitor = _client(app, "192.0.2.21")
    token = {"token": site.tokens["admin"]}
    for foreign in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver.evil.example"},
        {"Referer": "https://evil.example/login-form.html"},
    ):
        answer = visitor.post("/login", data=token, headers=foreign, follow_redirects=False)
        assert answer.status_code == 403, (foreign, answer.text[:200])
        assert "set-cookie" not in answer.headers, foreign
    same = visitor.post(
        "/login", data=token, headers={"Origin": "http://testserver"}, follow_redirects=False
    )
    assert same.status_code == 303

    browser, csrf = _login(app, site, "operator", "192.0.2.22")
    evil = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    refused = browser.post("/api/v1/jobs/999999/cancel", headers=evil)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    own = {"X-CSRF-Token": csrf, "Origin": "http://testserver"}
    assert browser.post("/api/v1/jobs/999999/cancel", headers=own).status_code == 404
    forced = browser.post("/logout", headers={"Origin": "https://evil.example"})
    assert forced.status_code == 403
    assert browser.get("/api/v1/vms").status_code == 200  # still logged in


# -- 5. plan days ---------------------------------------------------------------------------------


def test_plan_days_out_of_range_get_422(app: Any, site: Site) -> None:
    client = _client(app, "192.0.2.30")
    reader = site.auth("reader")
    today = datetime.now(UTC).date()
    eleven_years = timedelta(days=11 * 366)
    for day in (
        "9999-12-31",
        "0001-01-01",
        (today + eleven_years).isoformat(),
        (today - eleven_years).isoformat(),
    ):
        for path in (f"/api/v1/plan?day={day}", f"/api/v1/plan?day={day}&stagger=true"):
            answer = client.get(path, headers=reader)
            assert answer.status_code == 422, (path, answer.text[:300])
            error = answer.json()["error"]
            assert error["code"] == "invalid_request" and "day" in error["message"], error
        chart = client.get(f"/api/v1/plan/chart.svg?day={day}", headers=reader)
        assert chart.status_code == 422, chart.text[:300]
    near = (today + timedelta(days=9 * 365)).isoformat()
    assert client.get(f"/api/v1/plan?day={near}", headers=reader).status_code == 200
    browser, _ = _login(app, site, "reader", "192.0.2.31")
    page = browser.get("/plan?day=9999-12-31")
    assert page.status_code == 200 and "9999-12-31" in page.text  # the page names the bad day


def test_a_job_page_with_a_non_ascii_digit_is_a_404(app: Any, site: Site) -> None:
    browser, _ = _login(app, site, "reader", "192.0.2.32")
    for job_id in ("%C2%B2", "%D9%A1", "99999999999999999"):  # '²', Arabic-Indic one, too big
        answer = browser.get(f"/jobs/{job_id}")
        assert answer.status_code == 404, (job_id, answer.status_code, answer.text[:200])


# -- 6. the dashboard's links ---------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("a", "link") and values.get("href"):
            self.found.append(str(values["href"]))
        elif tag in ("img", "script") and values.get("src"):
            self.found.append(str(values["src"]))
        elif tag == "form" and (values.get("method") or "get").lower() == "get":
            self.found.append(str(values.get("action") or ""))


def test_every_link_of_the_dashboard_resolves_for_an_admin(app: Any, site: Site) -> None:
    browser, _ = _login(app, site, "admin", "192.0.2.40")
    start = ["/", "/jobs", "/plan", "/cost", "/alerts"]
    # The pages' script draws links to jobs from the API: they are visited too.
    jobs = browser.get("/api/v1/jobs?limit=20").json()["items"]
    start += [f"/jobs/{job['id']}" for job in jobs]
    seen: set[str] = set()
    queue = [urljoin("http://testserver/", path) for path in start]
    broken: list[str] = []
    while queue and len(seen) < 300:
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        answer = browser.get(url, follow_redirects=False)
        if answer.status_code != 200:
            broken.append(f"{url}: {answer.status_code}")
            continue
        if not answer.headers.get("content-type", "").startswith("text/html"):
            continue
        parser = _Links()
        parser.feed(answer.text)
        for link in parser.found:
            target = urljoin(url, link).split("#")[0]
            if urlsplit(target).netloc == "testserver" and target not in seen:
                queue.append(target)
    assert not broken, broken
    visited = {urlsplit(u).path for u in seen}
    assert {"/api/openapi.json", "/static/style.css", "/vms/web01"} <= visited, sorted(visited)
