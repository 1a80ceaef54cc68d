"""The dashboard's pages over HTTP (FastAPI's test client on a real site): error pages for
anybody (unknown addresses, a page's values it cannot use), the monthly report's dashboard
route, the fleet's protection by the reports' rule, and a VM the inventory does not name
(backed up from the command line): its pages offer only what works, and it restores as a
new VM."""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from support.cli import same_content
from support.serverkit import Site, make_site
from vmvault.app.backup import run_backup
from vmvault.app.disks import DiskSpec
from vmvault.reports.monthly import previous_month
from vmvault.server.app import create_app
from vmvault.units import measured_duration
from vmvault.vault.config import new_point_id

FINAL = ("succeeded", "failed", "cancelled", "partially_succeeded")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """web01 backed up now; db01's only point two days old (its RPO is 30 h: at risk);
    cli-only backed up from the command line, not in the inventory."""
    site = make_site(tmp_path_factory.mktemp("pages"))
    vault = site.ctx.open_vault(load_index=False)
    (web01,) = vault.points()
    old = datetime.now(UTC) - timedelta(days=2)
    stamp = old.isoformat()
    vault.put_point({**web01, "vm": "db01", "id": new_point_id(old)} | _times(stamp))
    disk = site.root / "cli-only.img"
    with open(disk, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(3 << 20)
    run_backup(site.ctx, "cli-only", [DiskSpec("sda", str(disk))])
    return site


def _times(stamp: str) -> dict[str, Any]:
    return {"created": stamp, "completed": stamp}


@pytest.fixture(scope="module")
def app(site: Site) -> Iterator[TestClient]:
    with TestClient(create_app(site.config)) as client:
        yield client


def _browser(app: TestClient, site: Site, role: str) -> TestClient:
    """A client of the same app with its own cookies, logged in with ``role``."""
    browser = TestClient(app.app)
    answer = browser.post("/login", data={"token": site.tokens[role]}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return browser


def _cli_point(app: TestClient, site: Site) -> dict[str, Any]:
    doc = app.get("/api/v1/points?vm=cli-only", headers=site.auth("reader")).json()
    return dict(doc["items"][0])


def test_logged_out_an_unknown_address_is_the_404_page_without_navigation(
    app: TestClient, site: Site
) -> None:
    for path in ("/nonexistent", "/favicon.ico", "/no/such/page?x=1"):
        for headers in ({}, site.auth("admin")):  # a bearer token opens no page either
            answer = app.get(path, headers=headers)
            assert answer.status_code == 404, (path, answer.text[:300])
            assert answer.headers["content-type"].startswith("text/html")
            page = answer.text
            assert f"there is no page at {path.split('?')[0]}" in page
            assert "<nav>" not in page and "Log out" not in page and 'href="/login"' in page
            assert "/api/openapi.json" not in page
    # The pages name their icon, so a browser does not ask for /favicon.ico.
    icon = app.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert 'rel="icon" href="/static/favicon.svg"' in app.get("/login").text
    # Logged in, the same page has the navigation.
    page = _browser(app, site, "reader").get("/nonexistent")
    assert page.status_code == 404 and "<nav>" in page.text and "Log out" in page.text


def test_a_page_value_it_cannot_use_is_a_400_page_and_the_api_keeps_json(
    app: TestClient, site: Site
) -> None:
    browser = _browser(app, site, "reader")
    for path, named in (
        ("/jobs?offset=abc", "offset 'abc'"),
        ("/alerts?offset=x", "offset 'x'"),
        ("/points?offset=1.5", "offset '1.5'"),
        ("/vms/web01?offset=z", "offset 'z'"),
    ):
        answer = browser.get(path)
        assert answer.status_code == 400, (path, answer.text[:300])
        assert answer.headers["content-type"].startswith("text/html")
        assert "this address has a value the page cannot use" in answer.text, path
        shown = html.unescape(answer.text)
        assert named in shown and "valid integer" in shown, path
        assert "<nav>" in answer.text  # the viewer's page, with the navigation
    logged_out = app.get("/jobs?offset=abc")
    assert logged_out.status_code == 400 and "<nav>" not in logged_out.text
    api = browser.get("/api/v1/jobs?offset=abc")
    assert api.status_code == 422 and api.json()["error"]["code"] == "invalid_request"


def test_the_monthly_report_goes_through_the_dashboard_and_a_bad_month_is_a_page(
    app: TestClient, site: Site
) -> None:
    browser = _browser(app, site, "reader")
    page = browser.get("/reports").text
    this_month = datetime.now(UTC).strftime("%Y-%m")
    assert 'type="month" name="month"' in page and f'max="{this_month}" required' in page
    assert 'action="/reports/monthly"' in page and "/api/v1/reports/monthly" not in page
    good = browser.get(f"/reports/monthly?month={this_month}&format=csv")
    assert good.status_code == 200 and good.headers["content-type"].startswith("text/csv")
    assert f'filename="vmvault-{this_month}.csv"' in good.headers["content-disposition"]
    assert good.text.startswith("vm,backups_ok") and "web01," in good.text
    pdf = browser.get(f"/reports/monthly?month={this_month}&format=pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    last_month = previous_month(datetime.now(UTC))  # without a month, as the API
    default = browser.get("/reports/monthly")
    assert f'filename="vmvault-{last_month}.csv"' in default.headers["content-disposition"]
    for query, message in (
        ("month=2026-13&format=csv", "month: '2026-13' is not YYYY-MM"),
        ("month=2026-1&format=pdf", "month: '2026-1' is not YYYY-MM"),
        ("month=2999-01&format=csv", "month: 2999-01 has not begun yet"),
        (f"month={this_month}&format=xls", "format: 'xls' is neither csv nor pdf"),
    ):
        answer = browser.get(f"/reports/monthly?{query}")
        assert answer.status_code == 400, (query, answer.text[:300])
        assert answer.headers["content-type"].startswith("text/html")
        assert 'id="monthly-error"' in answer.text and message in html.unescape(answer.text)
    logged_out = app.get("/reports/monthly?month=2026-01", follow_redirects=False)
    assert logged_out.status_code == 303  # to the login page, as every page


def test_the_fleet_says_at_risk_as_the_tiles_do_and_the_rpo_is_exact(
    app: TestClient, site: Site
) -> None:
    rows = app.get("/api/v1/vms", headers=site.auth("reader")).json()["items"]
    status = {row["name"]: (row["rpo_status"], row["protection"]) for row in rows}
    assert status == {"web01": ("protected", "protected"), "db01": ("at_risk", "protected")}
    summary = app.get("/api/v1/reports/summary", headers=site.auth("reader")).json()
    assert {vm["vm"]: vm["status"] for vm in summary["vms"]} == {
        "web01": "protected",
        "db01": "at_risk",
    }
    home = _browser(app, site, "reader").get("/").text
    assert "RPO 30 h)" in home and "1.2 days" not in home  # the at-risk line
    vm_page = _browser(app, site, "reader").get("/vms/db01").text
    assert '<span class="badge status-at_risk">at risk</span>' in vm_page


def test_a_vm_outside_the_inventory_offers_only_what_works(app: TestClient, site: Site) -> None:
    point = _cli_point(app, site)
    operator = _browser(app, site, "operator")
    vm_page = operator.get("/vms/cli-only").text
    assert "data-backup" not in vm_page  # no "Back up now" that would fail
    assert "not in the inventory: back it up from the command line" in vm_page
    assert '<span class="badge muted">not in the inventory</span></td>' in vm_page  # its disk
    assert '<span class="badge ok">protected</span>' not in vm_page
    point_page = operator.get(f"/points/{point['id']}").text
    assert 'id="restore"' in point_page and 'value="in_place"' not in point_page
    assert 'id="no-in-place"' in point_page and "cli-only is not in the inventory" in point_page
    assert 'value="in_place"' in operator.get(f"/points/{_web01_point(app, site)}").text
    reports = operator.get("/reports").text
    row = reports[reports.index('<a href="/vms/cli-only">') :].split("</tr>")[0]
    completed = datetime.fromisoformat(point["completed"]).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert completed in row and "not in the inventory" in row


def _web01_point(app: TestClient, site: Site) -> str:
    doc = app.get("/api/v1/points?vm=web01", headers=site.auth("reader")).json()
    return str(doc["items"][0]["id"])


def test_a_vm_outside_the_inventory_restores_as_a_new_vm(app: TestClient, site: Site) -> None:
    point = _cli_point(app, site)
    auth = site.auth("operator")
    body = {"vm": "cli-only", "point": point["id"], "new_name": "cli-copy"}
    queued = app.post("/api/v1/restores", headers=auth, json=body)
    assert queued.status_code == 202, queued.text
    job = _wait(app, site, queued.json()["id"])
    assert job["state"] == "succeeded", job
    restored = site.root / "restores" / "cli-copy" / "cli-copy-sda.img"
    assert same_content(restored, site.root / "cli-only.img")
    assert [d["path"] for d in job["details"]["disks"]] == [str(restored)]
    # In place needs the inventory's entry (where the disks are): refused, saying so.
    in_place = {"vm": "cli-only", "point": point["id"], "in_place": True, "confirm": "cli-only"}
    refused = app.post("/api/v1/restores", headers=auth, json=in_place)
    assert refused.status_code == 404 and "no VM named 'cli-only'" in refused.text
    # A name neither the inventory nor the vault knows is still the inventory's error.
    nobody = {"vm": "nobody", "new_name": "nobody-copy"}
    missing = app.post("/api/v1/restores", headers=auth, json=nobody)
    assert missing.status_code == 404 and "no VM named 'nobody'" in missing.text


def _wait(app: TestClient, site: Site, job_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = app.get(f"/api/v1/jobs/{job_id}", headers=site.auth("reader")).json()
        if job["state"] in FINAL:
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_an_unknown_vm_page_names_every_vm_that_has_one(app: TestClient, site: Site) -> None:
    """The 404 of /vms/nosuch lists the VMs of the inventory and those only the vault's
    points name (backed up from the command line), all of which have a page."""
    page = _browser(app, site, "reader").get("/vms/nosuch")
    assert page.status_code == 404
    assert "no VM named 'nosuch' (known: web01, db01, cli-only)" in html.unescape(page.text)
    assert _browser(app, site, "reader").get("/vms/cli-only").status_code == 200


def test_seconds_have_their_unit_and_a_mean_under_a_second_is_not_0_s(
    app: TestClient, site: Site
) -> None:
    reader = _browser(app, site, "reader")
    point = reader.get(f"/points/{_web01_point(app, site)}").text
    disks = point[point.index('<table class="disks">') :].split("</table>")[0]
    seconds = re.findall(r'<td class="num">([^<]*)</td>\s*<td><a class="browse"', disks)
    assert seconds and all(re.fullmatch(r"\d+\.\d\d s", s) for s in seconds), seconds
    summary = app.get("/api/v1/reports/summary", headers=site.auth("reader")).json()
    mean = summary["per_vm"]["web01"]["duration"]
    reports = reader.get("/reports").text
    row = reports[reports.index('<a href="/vms/web01">') :].split("</tr>")[0]
    assert f'<td class="num">{measured_duration(mean)}</td>' in row
    assert '<td class="num">0 s</td>' not in row or mean == 0


def test_a_job_queued_on_a_server_without_worker_says_who_will_run_it(
    app: TestClient, site: Site
) -> None:
    """`serve --no-scheduler` queues what the API is asked for, and its 202 says that the
    job waits for a `vmvault worker` or `vmvault scheduler` on the same catalog."""
    point = _web01_point(app, site)
    auth = site.auth("operator")
    serve_only = replace(site.config, scheduler=False, worker=False, alerts=False)
    with TestClient(create_app(serve_only)) as no_worker:
        queued = no_worker.post(f"/api/v1/points/{point}/verify", headers=auth)
        backup = no_worker.post("/api/v1/vms/web01/backup", headers=auth, json={})
    for answer in (queued, backup):
        assert answer.status_code == 202, answer.text
        note = answer.json()["note"]
        assert "this server runs no worker" in note
        assert "vmvault worker or vmvault scheduler sharing this catalog" in note
    # the server that runs a worker says nothing more, and runs them (the queue is shared)
    ran = app.post(f"/api/v1/points/{point}/verify", headers=auth)
    assert ran.status_code == 202 and "note" not in ran.json()
    for answer in (queued, backup, ran):
        assert _wait(app, site, answer.json()["id"])["state"] == "succeeded"
