"""A restore drill's outcome where people look: the API's point documents and the
dashboard's point rows and page (the drills themselves: tests/system/test_point_boot.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from support.serverkit import make_site
from vmvault.app.vm_backup import run_vm_backup
from vmvault.catalog.drills import record_drill
from vmvault.inventory import load_inventory
from vmvault.server.app import create_app


def test_points_show_their_latest_drill_and_the_undrilled_say_so(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    undrilled = run_vm_backup(site.ctx, load_inventory(site.config.inventory), "web01")
    app = create_app(site.config)
    with TestClient(app) as client:
        reader = site.auth("reader")
        listed = client.get("/api/v1/vms/web01/points", headers=reader).json()["items"]
        assert [p["drill"] for p in listed] == [None, None]
        point_id = listed[1]["id"]  # the older one
        vault_id = site.ctx.open_vault(load_index=False).config.vault_id
        catalog = site.ctx.catalog()
        for passed, message in ((False, "no sign of life within 60 s"), (True, "console")):
            record_drill(
                catalog,
                vault_id,
                point_id=point_id,
                vm="web01",
                at=datetime.now(UTC),
                passed=passed,
                signal="console",
                seconds=12.34,
                message=message,
            )

        point = client.get(f"/api/v1/points/{point_id}", headers=reader).json()
        assert point["drill"]["result"] == "boot-verified"  # the newest of the two
        assert point["drill"]["seconds"] == 12.3 and point["drill"]["message"] == "console"

        login = client.post("/login", data={"token": site.tokens["reader"]}, follow_redirects=False)
        assert login.status_code == 303, login.text
        page = client.get("/vms/web01").text
        assert "drill-boot-verified" in _row(page, point_id)
        assert "not drilled" in _row(page, undrilled["id"])
        assert "drill-boot-verified" in client.get(f"/points/{point_id}").text


def _row(page: str, point_id: str) -> str:
    found = re.search(rf'<tr data-point="{re.escape(point_id)}">(.*?)</tr>', page, re.S)
    assert found is not None, page
    return found.group(1)
