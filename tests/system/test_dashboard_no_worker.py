"""In Chromium, against `vmvault serve --no-scheduler`: a job run from the command line has a
job page like `vmvault jobs show` (its queued time, one attempt, the command line as its
worker); the restore form lays out each choice on its own line; a restore queued on a
server that runs no worker says who will run it; a restore's job page lists only what a
restore moves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from support.browserkit import chromium, logged_in, screenshot
from support.serverkit import make_site, serving

pytestmark = pytest.mark.browser


def _box(locator: Locator) -> dict[str, float]:
    box = locator.bounding_box()
    assert box is not None, locator
    return box


def _below(lower: Locator, upper: Locator) -> bool:
    """``lower`` starts at or under the bottom of ``upper``: on a line of its own after it."""
    top, above = _box(lower), _box(upper)
    return top["y"] >= above["y"] + above["height"] - 1


def _figures(page: Page) -> list[str]:
    return [t.strip().lower() for t in page.locator("dl.facts dt").all_inner_texts()]


def test_jobs_of_the_command_line_the_restore_form_and_a_server_without_worker(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "site")  # web01 backed up through the use case the CLI runs
    restores = str(site.config.restore_root)
    log = tmp_path / "server.log"
    with (
        serving(site, log, "--no-scheduler", "--restore-root", restores) as served,
        chromium() as browser,
    ):
        (cli_job,) = served.get("/api/v1/jobs", "reader").json()["items"]
        assert cli_job["queued_at"] is None and cli_job["worker"] is None
        page = logged_in(
            browser, served.url, site.tokens["operator"], viewport={"width": 1280, "height": 800}
        )

        # The command line's backup job, as `vmvault jobs list` and `jobs show` tell it.
        page.goto("/jobs")
        row = page.locator(f"#jobs tr[data-key='{cli_job['id']}']")
        queued = cli_job["created_at"][:19].replace("T", " ") + " UTC"
        expect(row.locator("td").nth(5)).to_have_text(queued)
        page.goto(f"/jobs/{cli_job['id']}")
        expect(page.locator("#job")).to_have_attribute("data-state", "succeeded")
        expect(page.locator("[data-field=queued_at]")).to_have_text(queued)
        expect(page.locator("[data-field=attempts]")).to_have_text("1")
        expect(page.locator("[data-field=worker]")).to_have_text("command line")
        assert _figures(page)[-5:] == ["read", "changed", "sent", "written", "point"]

        # The point page: seconds with their unit; the restore form, a choice a line.
        point = cli_job["point_id"]
        page.goto(f"/points/{point}")
        expect(page.locator("table.disks tbody tr").first.locator("td").nth(9)).to_have_text(
            re.compile(r"^\d+\.\d\d s$")
        )
        form = page.locator("#restore")
        new_vm = form.locator("label", has=page.locator("input[value=new]"))
        in_place = form.locator("label", has=page.locator("input[value=in_place]"))
        name_label, name = form.locator("label[for=new-name]"), form.locator("#new-name")
        format_label, formats = form.locator("label[for=format]"), form.locator("#format")
        shot = screenshot(page, "restore-form")
        assert shot.stat().st_size > 0
        assert _below(name_label, new_vm), "the name's label runs on after the choice"
        assert _below(format_label, name_label) and _below(formats, name)
        assert _below(in_place, formats), "the format sits on the in-place choice's line"
        assert _below(form.locator("label[for=confirm]"), in_place)
        # each field beside its own label, not on another line
        for label, field in ((name_label, name), (format_label, formats)):
            assert abs(_box(label)["y"] - _box(field)["y"]) < _box(field)["height"]
            assert _box(field)["x"] > _box(label)["x"]

        # A restore on a server that runs no worker: queued, and the page says who runs it.
        page.fill("#new-name", "web01-copy")
        page.click("#restore button")
        watch = page.locator(".job-watch")
        expect(watch.locator(".badge")).to_have_text("queued")
        note = watch.locator(".job-note")
        expect(note).to_contain_text("this server runs no worker")
        expect(note).to_contain_text("until a vmvault worker or vmvault scheduler")
        screenshot(page, "restore-queued-without-worker")
        watch.locator(".job-line a").first.click()
        expect(page.locator("#job")).to_have_attribute("data-state", "queued")
        expect(page.locator("[data-field=worker]")).to_have_text("\u2013")  # none yet
        expect(page.locator("[data-field=attempts]")).to_have_text("0")
        assert _figures(page)[-3:] == ["read (verified)", "written", "point"]
        page.context.close()
