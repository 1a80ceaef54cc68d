"""Reports against a served site with known backups: the summary's figures, the monthly
report as CSV and PDF, the dashboard's tiles and reports page; and the monthly files the
daily maintenance writes once into ``[reports] monthly_dir``."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from support.serverkit import make_site, serving
from vmvault.app.retention import monthly_files, run_maintenance
from vmvault.app.vm_backup import run_vm_backup
from vmvault.errors import VmvaultError
from vmvault.inventory import load_inventory
from vmvault.protection import stop as stop_protection
from vmvault.reports.monthly import previous_month


def test_reports_of_a_site_with_a_good_and_a_failed_backup(tmp_path: Path) -> None:
    root = tmp_path / "site"
    monthly_dir = tmp_path / "reports"
    site = make_site(root, extra_inventory=f'[reports]\nmonthly_dir = "{monthly_dir}"\n')
    inventory = load_inventory(root / "inventory.toml")
    db_disk = root / "disks" / "db01-os.img"
    db_disk.rename(db_disk.with_suffix(".gone"))
    with pytest.raises(VmvaultError):
        run_vm_backup(site.ctx, inventory, "db01")  # recorded as a failed backup job
    db_disk.with_suffix(".gone").rename(db_disk)
    (point,) = site.ctx.open_vault(load_index=False).points()
    disks = [d["stats"] for d in point["disks"]]
    stored, new = sum(s["stored"] for s in disks), sum(s["new"] for s in disks)
    seen = new + sum(s["unchanged"] + s["deduplicated"] for s in disks)

    # The first maintenance of a month writes last month's report; the next ones do not.
    last_month = previous_month(datetime.now(UTC))
    assert len(run_maintenance(site.ctx, inventory)["reports"]) == 2
    written = monthly_dir / f"vmvault-{last_month}.csv"
    assert written.read_text().splitlines()[0].startswith("vm,backups_ok,backups_failed")
    assert (monthly_dir / f"vmvault-{last_month}.pdf").read_bytes().startswith(b"%PDF")
    written.write_text("kept\n")
    assert monthly_files(site.ctx, inventory, datetime.now(UTC)) == []  # the hook, again
    assert written.read_text() == "kept\n"

    # Serving only: the scheduler's maintenance job would count among the jobs.
    with serving(site, tmp_path / "server.log", "--no-scheduler") as served:
        assert served.api("GET", "/api/v1/reports/summary", "reader").status_code == 200
        assert httpx.get(served.url + "/api/v1/reports/summary").status_code == 401
        summary = served.get("/api/v1/reports/summary", "reader").json()
        assert summary["protection"] == {
            "protected": 1,
            "at_risk": 0,
            "never_backed_up": 1,
            "not_scheduled": 0,
        }
        web01 = next(vm for vm in summary["vms"] if vm["vm"] == "web01")
        assert web01["rpo_seconds"] == 30 * 3600 and web01["last_good"] == point["completed"]
        assert summary["jobs"]["24h"] == {"succeeded": 1, "failed": 1}
        assert summary["usage"] == {"stored": stored, "growth_7d": stored}
        assert summary["ratios"]["dedup"] == round(seen / new, 3)
        assert summary["ratios"]["compression"] == round(new / stored, 3) > 1
        assert summary["per_day"][-1]["stored"] == stored
        assert summary["per_vm"]["web01"]["success_rate"] == 1.0
        assert summary["per_vm"]["db01"] == {
            "backups": 0,
            "duration": None,
            "throughput": None,
            "change_rate": None,
            "success_rate": 0.0,
            "last_good": None,
        }

        month = point["created"][:7]
        answer = served.get(f"/api/v1/reports/monthly?month={month}&format=csv", "reader")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        rows = {r["vm"]: r for r in csv.DictReader(io.StringIO(answer.text))}
        assert rows.keys() == {"web01", "db01"}
        assert rows["web01"]["backups_ok"] == "1" and rows["web01"]["stored_bytes"] == str(stored)
        assert rows["web01"]["last_good_backup"] == point["completed"]
        assert rows["db01"]["backups_failed"] == "1" and rows["db01"]["last_good_backup"] == ""
        pdf = served.get(f"/api/v1/reports/monthly?month={month}&format=pdf", "reader")
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.content.startswith(b"%PDF")
        bad = served.get("/api/v1/reports/monthly?month=2026-13", "reader")
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
        chart = served.get("/api/v1/reports/charts/usage.svg", "reader")
        assert chart.headers["content-type"] == "image/svg+xml" and b"<svg" in chart.content

        # A VM whose protection is stopped has no backups due: not scheduled, not at risk.
        stop_protection(site.ctx.open_vault(load_index=False), "db01", delete_data=False)
        again = served.get("/api/v1/reports/summary", "reader").json()["protection"]
        assert again["never_backed_up"] == 0 and again["not_scheduled"] == 1

        with httpx.Client(base_url=served.url, timeout=30) as browser:
            browser.post("/login", data={"token": site.tokens["reader"], "next": "/"})
            home = browser.get("/").text
            assert 'id="protection-tiles"' in home and 'href="/reports"' in home
            assert "1 not scheduled" in home and 'id="at-risk"' not in home
            page = browser.get("/reports").text
            assert f"/reports/monthly?month={last_month}&amp;format=pdf" in page
            assert 'src="/api/v1/reports/charts/vms.svg"' in page
