"""The dashboard reaches every point in the vault, also of VMs the inventory does not name
(backed up from the command line, or removed since): an all-points page, their VM pages,
and the fleet page listing them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from support.browserkit import chromium, logged_in
from support.serverkit import make_site, serving
from vmvault.app.backup import run_backup
from vmvault.app.disks import DiskSpec

pytestmark = pytest.mark.browser


def test_points_of_a_vm_outside_the_inventory_are_reachable(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")  # web01 of the inventory backed up
    disk = tmp_path / "adhoc.img"
    with open(disk, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(4 << 20)
    adhoc = run_backup(site.ctx, "adhoc01", [DiskSpec("sda", str(disk))])
    with serving(site, tmp_path / "server.log") as served, chromium() as browser:
        page = logged_in(browser, served.url, site.tokens["reader"])
        context = page.context

        expect(page.locator("#outside-inventory")).to_contain_text("adhoc01")
        page.click("#outside-inventory a:text-is('adhoc01')")
        expect(page.locator("#not-in-inventory")).to_be_visible()
        expect(page.locator("table.points")).to_contain_text(adhoc["id"])
        expect(page.locator("table.disks")).to_contain_text("sda")

        page.click("nav >> text=Points")
        expect(page.locator("table.points tbody tr")).to_have_count(2)
        expect(page.locator("table.points")).to_contain_text("web01")
        page.click(f"table.points a[href='/points/{adhoc['id']}']")
        expect(page.locator("h1")).to_contain_text("Recovery point")

        missing = page.goto("/vms/nobody")
        assert missing is not None and missing.status == 404
        context.close()


def test_an_admin_verifies_forgets_a_point_and_runs_the_maintenance(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")  # web01 backed up once
    second = run_backup(
        site.ctx, "web01", [DiskSpec("os", str(site.root / "disks" / "web01-os.img"))]
    )
    with serving(site, tmp_path / "server.log") as served, chromium() as browser:
        page = logged_in(browser, served.url, site.tokens["admin"])
        context = page.context

        page.goto(f"/points/{second['id']}")
        expect(page.locator("dd.verified")).to_have_text("never")
        page.click("#verify")
        watch = page.locator(".job-watch")
        expect(watch.locator(".badge")).to_have_text("succeeded", timeout=60_000)
        page.reload()
        expect(page.locator("dd.verified")).to_contain_text("ok")

        page.on("dialog", lambda dialog: dialog.accept())  # "Forget recovery point ...?"
        page.click("#forget")
        page.wait_for_url(f"{served.url}/vms/web01")
        expect(page.locator("table.points")).not_to_contain_text(second["id"])
        gone = page.goto(f"/points/{second['id']}")
        assert gone is not None and gone.status == 404

        page.goto("/points")
        page.click("#maintenance")
        expect(page.locator(".job-watch")).to_contain_text("maintenance job")
        expect(page.locator(".job-watch .badge")).to_have_text("succeeded", timeout=60_000)
        context.close()
