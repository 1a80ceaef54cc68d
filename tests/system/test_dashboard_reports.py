"""In Chromium: the fleet page opens with the protection tiles, and the Reports page shows
its charts (SVG drawn by the server) and links to the monthly report."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from support.browserkit import chromium, logged_in
from support.serverkit import make_site, serving

pytestmark = pytest.mark.browser


def test_tiles_and_the_reports_page_render(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")  # web01 backed up, db01 never
    with serving(site, tmp_path / "server.log") as served, chromium() as browser:
        page = logged_in(browser, served.url, site.tokens["reader"])
        context = page.context

        expect(page.locator("#tile-protected .figure")).to_have_text("1")
        expect(page.locator("#tile-protected")).to_contain_text("1 never backed up")
        expect(page.locator("#tile-failed .figure")).to_have_text("0")
        expect(page.locator("#tile-usage .figure")).to_contain_text("iB")
        expect(page.locator("#at-risk")).to_contain_text("db01")

        page.click("nav >> text=Reports")
        expect(page.locator("h1")).to_have_text("Reports")
        for chart in ("#usage-chart", "#vms-chart"):  # drawn: the SVG loaded with a size
            expect(page.locator(chart)).to_be_visible()
            page.wait_for_function(
                "s => document.querySelector(s).complete "
                "&& document.querySelector(s).naturalWidth > 0",
                arg=chart,
            )
        expect(page.locator("#per-vm tbody tr")).to_have_count(2)
        expect(page.locator("#per-vm")).to_contain_text("100 %")  # web01's success rate
        with page.expect_download() as download:
            page.click("#monthly a:text-is('CSV')")
        assert download.value.suggested_filename.endswith(".csv")
        context.close()
