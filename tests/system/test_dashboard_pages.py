"""In Chromium: what a visitor meets beside the happy path. The login page loads without a
failed request (the icon is the server's), unknown addresses and values a page cannot use
are HTML pages, the monthly report's month is a month picker whose download and errors stay
in the dashboard, the fleet says "at risk" as the tiles do, and a VM backed up from the
command line (not in the inventory) offers only what works: it restores as a new VM, and
the restore job's page says where its disks went."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Response, expect

from support.browserkit import chromium, logged_in
from support.cli import same_content
from support.serverkit import make_site, serving
from vmvault.app.backup import run_backup
from vmvault.app.disks import DiskSpec
from vmvault.vault.config import new_point_id

pytestmark = pytest.mark.browser
JOB_TIMEOUT = 60_000  # ms


def test_logged_out_pages_load_cleanly_and_unknown_addresses_are_404_pages(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "site", backup=False)
    with serving(site, tmp_path / "server.log") as served, chromium() as browser:
        context = browser.new_context(base_url=served.url)
        page = context.new_page()
        failed: list[str] = []
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        with page.expect_response("**/static/favicon.svg") as icon:
            page.goto("/login")
        assert icon.value.status == 200  # the page's own icon, not a /favicon.ico miss
        assert failed == []
        for path in ("/favicon.ico", "/nonexistent"):
            answer: Response | None = page.goto(path)
            assert answer is not None and answer.status == 404, path
            expect(page.locator("h1")).to_have_text("Not found")
            expect(page.locator("p.missing")).to_have_text(f"there is no page at {path}")
            expect(page.locator("header nav")).to_have_count(0)  # nothing of the site
            page.click("main a:text-is('Log in')")
            page.wait_for_url(f"{served.url}/login")
        context.close()


def test_errors_reports_risk_and_a_vm_outside_the_inventory(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")  # web01 backed up now
    vault = site.ctx.open_vault(load_index=False)
    (web01,) = vault.points()
    old = datetime.now(UTC) - timedelta(days=2)  # past db01's RPO of 30 h
    stamp = old.isoformat()
    vault.put_point(
        {**web01, "vm": "db01", "id": new_point_id(old), "created": stamp, "completed": stamp}
    )
    disk = tmp_path / "cli-only.img"
    with open(disk, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(3 << 20)
    cli = run_backup(site.ctx, "cli-only", [DiskSpec("sda", str(disk))])
    restore_root = ("--restore-root", str(site.config.restore_root))
    with serving(site, tmp_path / "server.log", *restore_root) as served, chromium() as browser:
        page = logged_in(browser, served.url, site.tokens["operator"])

        # The fleet's Protection column and the tiles: one rule.
        expect(page.locator("#fleet tr[data-key=db01] .badge.status-at_risk")).to_have_text(
            "at risk"
        )
        expect(page.locator("#fleet tr[data-key=web01] .badge.status-protected")).to_be_visible()
        expect(page.locator("#tile-protected")).to_contain_text("1 at risk")
        expect(page.locator("#at-risk")).to_contain_text("RPO 30 h)")

        # A value a page cannot use: an HTML page saying which, not the API's JSON.
        answer = page.goto("/jobs?offset=abc")
        assert answer is not None and answer.status == 400
        expect(page.locator("p.missing")).to_contain_text("offset 'abc'")
        expect(page.locator("header nav")).to_be_visible()

        # The monthly report: a month picker; the file and its errors come from the dashboard.
        page.goto("/reports")
        month = page.locator("#monthly-form input[name=month]")
        expect(month).to_have_attribute("type", "month")
        month.fill(old.strftime("%Y-%m"))
        with page.expect_download() as download:
            page.click("#monthly-form button[value=csv]")
        assert "/reports/monthly?month=" in download.value.url
        assert download.value.suggested_filename == f"vmvault-{old:%Y-%m}.csv"
        answer = page.goto("/reports/monthly?month=2026-13&format=csv")
        assert answer is not None and answer.status == 400
        expect(page.locator("#monthly-error")).to_contain_text("'2026-13' is not YYYY-MM")
        row = page.locator("#per-vm tr", has_text="cli-only")
        expect(row).to_contain_text(datetime.fromisoformat(cli["completed"]).strftime("%Y-%m-%d"))

        # cli-only: no "Back up now" (it would fail), and why; its disks are not protected by
        # an inventory entry.
        page.goto("/vms/cli-only")
        expect(page.locator("button[data-backup]")).to_have_count(0)
        expect(page.locator("#no-backup")).to_contain_text(
            "not in the inventory: back it up from the command line"
        )
        expect(page.locator("table.disks tbody tr")).to_contain_text("not in the inventory")

        # Its point restores as a new VM (no in-place choice), and the job's page says where.
        page.goto(f"/points/{cli['id']}")
        expect(page.locator("input[value=in_place]")).to_have_count(0)
        expect(page.locator("#no-in-place")).to_be_visible()
        page.fill("#new-name", "cli-copy")
        page.click("#restore button")
        watch = page.locator(".job-watch")
        expect(watch.locator(".badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT)
        restored = site.root / "restores" / "cli-copy" / "cli-copy-sda.img"
        assert same_content(restored, disk)
        watch.locator(".job-line a").first.click()
        page.wait_for_url("**/jobs/*")
        expect(page.locator("#restored")).to_be_visible()
        expect(page.locator("#restored ul.restored")).to_contain_text(f"sda: {restored}")
        expect(page.locator("#restored")).to_contain_text("cli-copy.toml")
        page.context.close()
