"""The dashboard in a real browser: Playwright drives Debian's Chromium against `vmvault serve`
running on a site of serverkit. Every page visited is saved as a screenshot in the test
artifacts ($VMVAULT_TEST_ARTIFACTS, else build/test-artifacts/dashboard/)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from support.browserkit import ARTIFACTS, chromium, screenshot
from support.cli import same_content
from support.serverkit import Served, make_site, serving

pytestmark = pytest.mark.browser

JOB_TIMEOUT = 60_000  # ms: a job of the small test VMs takes about a second


class _Hook(BaseHTTPRequestHandler):
    """An alert webhook that accepts everything."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("dashboard")
    webhook = f"http://127.0.0.1:{hook.server_port}/hooks/vmvault"
    site = make_site(root / "site", extra_inventory=f'[alerts]\nwebhooks = ["{webhook}"]\n')
    log = root / "server.log"
    try:
        with serving(site, log, "--restore-root", str(site.config.restore_root)) as served:
            yield served
    finally:
        hook.shutdown()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        shutil.copyfile(log, ARTIFACTS / f"server-{worker}.log")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


# What went wrong inside each page: script exceptions and refusals by the page's
# Content-Security-Policy (an inline script or style slipped in).
_PROBLEMS: dict[Page, list[str]] = {}


def _page(browser: Browser, server: Served) -> Page:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 720})
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems = _PROBLEMS.setdefault(page, [])
    page.on("pageerror", lambda error: problems.append(f"{page.url}: {error}"))
    page.on(
        "console",
        lambda m: (
            problems.append(f"{page.url}: {m.text}")
            if m.type == "error" and "Refused" in m.text
            else None
        ),
    )
    return page


def _close(page: Page) -> None:
    problems = _PROBLEMS.pop(page, [])
    page.context.close()
    assert not problems, problems


def _login(browser: Browser, server: Served, role: str) -> Page:
    page = _page(browser, server)
    page.goto("/login")
    page.fill("#token", server.site.tokens[role])
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
    return page


def _shot(page: Page, name: str) -> None:
    screenshot(page, name)


def test_a_wrong_token_gets_the_login_error_and_pages_need_a_session(
    browser: Browser, server: Served
) -> None:
    page = _page(browser, server)
    page.goto("/vms/web01")
    assert page.url == f"{server.url}/login?next=%2Fvms%2Fweb01"
    page.fill("#token", "vmv_not-a-token")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_have_text("That token is not valid.")
    _shot(page, "login-error")
    page.fill("#token", server.site.tokens["reader"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/vms/web01")  # back where the visitor was going
    expect(page.locator("h1")).to_have_text("web01")
    page.click("text=Log out")
    page.wait_for_url(f"{server.url}/login")
    page.goto("/jobs")
    assert page.url.startswith(f"{server.url}/login")
    _close(page)


def test_pages_need_a_session_and_login_leads_only_back_to_this_server(server: Served) -> None:
    pages = ("/", "/vms/web01", "/points/x", "/jobs", "/jobs/1", "/plan", "/cost", "/alerts")
    for path in pages:
        # A bearer token opens the API, not the pages: their actions need a session's CSRF.
        answer = httpx.get(server.url + path, headers=server.site.auth("admin"))
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), path
    form = httpx.get(f"{server.url}/login", params={"next": "//elsewhere.example/x"}).text
    assert 'name="next" value="/"' in form
    reader = server.site.tokens["reader"]
    for target, landing in (
        ("https://elsewhere.example/", "/"),
        ("//elsewhere.example", "/"),
        ("/\\elsewhere.example", "/"),
        ("/alerts?offset=0", "/alerts?offset=0"),
    ):
        answer = httpx.post(f"{server.url}/login", data={"token": reader, "next": target})
        assert answer.status_code == 303 and answer.headers["location"] == landing, target
    fleet = httpx.get(server.url, cookies=answer.cookies)
    assert fleet.status_code == 200
    assert "script-src" not in fleet.headers["content-security-policy"]  # default-src 'self'
    assert "default-src 'self'" in fleet.headers["content-security-policy"]


def test_a_reader_sees_the_fleet_without_actions_and_unknown_ids_get_404(
    browser: Browser, server: Served
) -> None:
    page = _login(browser, server, "reader")
    expect(page.locator("#fleet tbody tr")).to_have_count(2)
    expect(page.locator("#fleet tr[data-key=web01]")).to_contain_text("protected")
    expect(page.locator("button", has_text="Back up now")).to_have_count(0)
    page.click("#fleet a:text-is('web01')")
    expect(page.locator("table.disks")).to_contain_text("excluded")  # the temporary disk
    expect(page.locator("button[data-backup]")).to_have_count(0)
    page.click("table.points a")
    expect(page.locator("h1")).to_contain_text("Recovery point")
    expect(page.locator("#verify")).to_have_count(0)
    expect(page.locator("#restore")).to_have_count(0)
    for path, message in (
        ("/vms/nope", "no VM named 'nope'"),
        ("/points/20990101T000000.000000Z-none", "no recovery point"),
        ("/jobs/987654", "no job 987654"),
        ("/jobs/latest", "no job 'latest'"),
    ):
        answer = page.goto(path)
        assert answer is not None and answer.status == 404, path
        expect(page.locator("p.missing")).to_contain_text(message)
    _shot(page, "not-found")
    # An address that is no page gets the dashboard's 404 page; the API's, its JSON error.
    answer = page.goto("/no/such/page")
    assert answer is not None and answer.status == 404
    expect(page.locator("p.missing")).to_contain_text("there is no page at /no/such/page")
    expect(page.locator("footer a")).to_have_attribute("href", "/api/openapi.json")
    api = page.request.get("/api/v1/no-such-route")
    assert api.status == 404 and api.json()["error"]["code"] == "not_found"
    # A point's page by a unique prefix of its id.
    point = page.request.get("/api/v1/vms/web01/points").json()["items"][0]["id"]
    page.goto(f"/points/{point[:15]}")
    expect(page.locator("h1")).to_contain_text("Recovery point")
    assert point in page.title()
    # The footer's link to the API's description opens it.
    page.goto("/")
    with page.expect_navigation():
        page.click("footer a")
    assert page.url.endswith("/api/openapi.json")
    assert "openapi" in page.content()
    _close(page)


def test_backup_restore_planner_cost_and_alerts_in_the_browser(
    browser: Browser, server: Served
) -> None:
    site = server.site
    page = _login(browser, server, "operator")
    db01 = page.locator("#fleet tr[data-key=db01]")
    expect(db01).to_contain_text("never")
    expect(page.locator("#fleet tr[data-key=web01]")).to_contain_text("crash")

    # Back up now, then watch the job on the jobs page until it succeeds.
    db01.locator("button", has_text="Back up now").click()
    queued = db01.locator(".note a")
    expect(queued).to_be_visible()
    job_id = queued.inner_text().lstrip("#")
    page.click("nav >> text=Jobs")
    row = page.locator(f"#jobs tr[data-key='{job_id}']")
    expect(row).to_contain_text("db01")
    expect(row.locator(".badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT)
    expect(row.locator("progress")).to_have_attribute("value", "100")
    expect(row.locator(".pct")).to_have_text("100 %")
    _shot(page, "jobs")
    page.fill("#filter-vm", "web01")  # the filters: db01's job is not among web01's
    page.select_option("#filter-state", "succeeded")
    page.click("#job-filters button")
    expect(page.locator("#jobs")).to_have_attribute("data-loaded", "1")
    expect(page.locator(f"#jobs tr[data-key='{job_id}']")).to_have_count(0)
    page.select_option("#filter-state", "failed")
    page.fill("#filter-vm", "db01")
    page.click("#job-filters button")
    expect(page.locator("#jobs")).to_have_attribute("data-loaded", "1")
    expect(page.locator(f"#jobs tr[data-key='{job_id}']")).to_have_count(0)
    page.select_option("#filter-state", "succeeded")
    page.click("#job-filters button")
    row = page.locator(f"#jobs tr[data-key='{job_id}']")
    expect(row).to_contain_text("db01")
    row.locator(f"a:text-is('#{job_id}')").click()
    expect(page.locator("#job")).to_have_attribute("data-state", "succeeded")
    expect(page.locator(".disk-progress tbody tr")).to_contain_text("os")
    expect(page.locator("[data-field=elapsed]")).to_contain_text(" s")  # how long it ran
    expect(page.locator("[data-field=rate]")).to_contain_text("iB/s")  # bytes read / time
    expect(page.locator("[data-field=eta]")).to_have_text("\u2013")  # nothing left
    point_id = page.locator("[data-field=point_id] code").inner_text()
    _shot(page, "job")

    # The fleet shows the new point; the VM page lists it with its sizes.
    page.click("nav >> text=Fleet")
    expect(db01).to_contain_text("crash")
    expect(db01.locator("td").nth(4)).to_have_text("1")
    _shot(page, "fleet")
    db01.locator("a:text-is('db01')").click()
    points = page.locator("table.points tbody tr")
    expect(points).to_have_count(1)
    expect(points).to_contain_text("6.0 MiB")  # the disk's size
    expect(points).to_contain_text("VM is stopped")  # the consistency's reason
    _shot(page, "vm")
    points.locator("a").click()
    page.wait_for_url(f"**/points/{point_id}")
    expect(page.locator("table.disks")).to_contain_text("os")
    expect(page.locator("p.consistency")).to_contain_text("crash")
    _shot(page, "point")
    # Two points now (web01's, db01's): a prefix of both is refused, saying so.
    ambiguous = page.goto("/points/2")
    assert ambiguous is not None and ambiguous.status == 400
    expect(page.locator("p.missing")).to_contain_text("give more of the id")
    page.goto(f"/points/{point_id}")

    # Verify, then restore as a new VM; each job is followed on the page.
    page.click("#verify")
    watch = page.locator(".job-watch")
    expect(watch).to_contain_text("verify job")
    expect(watch.locator(".badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT)
    expect(page.locator("#restore-root")).to_contain_text(str(site.root / "restores"))
    page.fill("#new-name", "db01-copy")
    page.click("#restore button")
    expect(watch).to_contain_text("restore job")
    expect(watch.locator(".badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT)
    restored = site.root / "restores" / "db01-copy" / "db01-copy-os.img"
    expect(watch.locator("ul.restored")).to_contain_text(str(restored))  # where it went
    _shot(page, "point-restored")
    assert same_content(restored, site.root / "disks" / "db01-os.img")
    page.click("#restore button")  # the same name again: refused, and the page says why
    expect(watch.locator(".error")).to_contain_text("restored before")
    page.check("input[name=mode][value=in_place]")  # in place needs the VM's name typed
    page.click("#restore button")
    expect(watch.locator(".error")).to_contain_text("confirm with the VM's name")

    # The planner's chart is an image the browser could load and decode.
    page.click("nav >> text=Planner")
    page.wait_for_function(
        "() => { const img = document.getElementById('load-chart');"
        " return img.complete && img.naturalWidth > 0; }"
    )
    pools = page.locator("table.pools tbody tr")
    expect(pools).to_contain_text("fast")
    expect(pools).to_contain_text("190.7 MiB/s")  # the pool's 200 MB/s budget, in MiB/s
    expect(page.locator("table.plan-jobs tbody tr")).to_have_count(2)
    _shot(page, "plan")

    page.click("nav >> text=Cost")
    expect(page.locator("table.cost tbody tr")).to_have_count(2)
    expect(page.locator("table.cost tfoot")).to_contain_text("10.00")
    _shot(page, "cost")

    # A security event: immutability turned off. It is delivered to the webhook and shown.
    for setting in ("on", "off"):
        answer = server.api("PATCH", "/api/v1/vault", "admin", json={"immutability": setting})
        assert answer.status_code == 200, answer.text
    page.click("nav >> text=Alerts")
    alert = page.locator("table.alerts tbody tr", has_text="immutability_disabled")
    delivered = alert.locator(".delivery.ok")
    deadline = time.monotonic() + 30
    while delivered.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    expect(delivered).to_contain_text("127.0.0.1")
    expect(alert).to_contain_text("critical")
    _shot(page, "alerts")
    _close(page)


def test_text_from_the_inventory_is_shown_as_text(browser: Browser, server: Served) -> None:
    inventory = Path(str(server.site.config.inventory))
    original = inventory.read_text()
    disk = server.site.root / "disks" / "db01-os.img"
    host = "<img src=x id=injected>&amp;"
    odd = (
        f'\n[[vms]]\nname = "odd01"\nhost = "{host}"\n[[vms.disks]]\nname = "os"\npath = "{disk}"\n'
    )
    answer = server.api("PUT", "/api/v1/inventory", "admin", json={"toml": original + odd})
    assert answer.status_code == 200, answer.text
    try:
        page = _login(browser, server, "reader")
        row = page.locator("#fleet tr[data-key=odd01]")
        expect(row.locator(".sub")).to_have_text(host)  # drawn by the script
        assert page.locator("#injected").count() == 0
        page.goto("/vms/odd01")
        expect(page.locator("dl.facts")).to_contain_text(host)  # drawn by the template
        assert page.locator("#injected").count() == 0
        _close(page)
    finally:
        answer = server.api("PUT", "/api/v1/inventory", "admin", json={"toml": original})
        assert answer.status_code == 200, answer.text
