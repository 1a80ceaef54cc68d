"""Chromium for the dashboard's browser tests: Debian's package driven by Playwright
(which downloads no browser of its own)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from support.paths import ROOT

# expect() waits 5 s by default, whatever the page's timeout: on a loaded 2-core machine a
# chart drawn by the server took longer (the img was still "hidden"). The same 30 s as the
# pages' own waits (logged_in).
expect.set_options(timeout=30_000)

# Screenshots of the pages the tests visit, to look at.
ARTIFACTS = Path(
    os.environ.get("VMVAULT_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts" / "dashboard"
)

CHROMIUM = "/usr/bin/chromium"  # make sysdeps installs it
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make sysdeps` installs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def logged_in(browser: Browser, url: str, token: str, **context_options: Any) -> Page:
    """A new page of ``url``'s dashboard, logged in with ``token`` (a fresh context)."""
    context = browser.new_context(base_url=url, **context_options)
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto("/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")
    return page


def screenshot(page: Page, name: str) -> Path:
    """The whole page, as tall as its content (not the window), saved in ARTIFACTS."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.locator("body").screenshot(path=str(path), animations="disabled")
    return path
