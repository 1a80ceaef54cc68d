"""`vmvault cost` from a real vault: sizes from the backups, billing from protection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from support.cli import PASSPHRASE, run_cli
from support.serverkit import make_site, serving
from vmvault import protection
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec


def test_cost_report_from_the_vault(tmp_path: Path, ctx: Context) -> None:
    for name in ("web", "db"):
        disk = tmp_path / f"{name}.img"
        with open(disk, "wb") as f:
            f.truncate(16 << 20)
            f.write(os.urandom(3 << 20))
        run_backup(ctx, name, [DiskSpec("os", str(disk), role="os")])
    protection.stop(ctx.open_vault(load_index=False), "db", delete_data=True)
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }
    result = run_cli("cost", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["vm"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["web"]["billed"] and rows["web"]["total"] == "5.00"  # under 50 GB: one small
    assert abs(rows["web"]["protected_instance_bytes"] - (3 << 20)) < (64 << 10)
    assert rows["web"]["storage_bytes"] > 3_000_000  # random data: stored as is
    assert not rows["db"]["billed"] and float(rows["db"]["total"]) == 0  # soft-deleted
    csv = run_cli("cost", "--csv", env=env)
    assert csv.stdout.splitlines()[0].startswith("vm,") and len(csv.stdout.splitlines()) == 3


def test_the_inventory_sets_the_price_table(tmp_path: Path, ctx: Context) -> None:
    disk = tmp_path / "web.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
        f.write(os.urandom(1 << 20))
    run_backup(ctx, "web", [DiskSpec("os", str(disk), role="os")])
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[pricing]\ncurrency = "EUR"\nsmall_price = 4.5\ninstance_price = 9\n'
        "storage_per_gb_month = 0\n"
    )
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }
    report = json.loads(run_cli("cost", "--json", "-i", str(inventory), env=env).stdout)
    assert report["currency"] == "EUR" and report["rows"][0]["total"] == "4.50"
    inventory.write_text("[pricing]\nsmall_price = 20\ninstance_price = 10\n")
    refused = run_cli("cost", "-i", str(inventory), env=env)
    assert refused.returncode == 2 and "pricing" in refused.stderr
    assert "small_price cannot exceed instance_price" in refused.stderr
    inventory.write_text("[pricing]\nenabled = false\n")
    off = run_cli("cost", "-i", str(inventory), "--json", env=env)
    assert off.returncode == 2
    assert json.loads(off.stdout)["error"]["code"] == "cost_model_off"


def test_a_server_with_the_cost_model_off_hides_it(tmp_path: Path) -> None:
    site = make_site(
        tmp_path / "site", backup=False, extra_inventory="[pricing]\nenabled = false\n"
    )
    with serving(site, tmp_path / "server.log") as served:
        refused = served.get("/api/v1/cost", "reader")
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "cost_model_off"
        with httpx.Client(base_url=served.url, timeout=30) as browser:
            browser.post("/login", data={"token": site.tokens["reader"], "next": "/"})
            home = browser.get("/")
            assert home.status_code == 200 and 'href="/cost"' not in home.text
            page = browser.get("/cost")
            assert page.status_code == 404 and "switched off" in page.text
