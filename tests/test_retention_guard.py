"""An immutable vault keeps each VM's points for the retention they were taken under,
whatever the VM's policy is called: through the CLI's prune, the API's inventory PUT and
the maintenance job."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import PASSPHRASE, run_cli
from vmvault import protection, service
from vmvault.alerts.store import list_alerts
from vmvault.inventory import parse_inventory
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.scheduler import run_maintenance
from vmvault.policy.errors import ImmutableVaultError
from vmvault.server.accounts import Accounts
from vmvault.server.app import create_app
from vmvault.server.state import ServerConfig
from vmvault.vault.vault import new_point_id


def _inventory(tmp_path: Path, policy: str, daily_days: int) -> str:
    return f"""
[policies.{policy}]
schedule = {{ kind = "daily", time = "22:30", timezone = "UTC" }}
retention = {{ daily_days = {daily_days} }}

[[vms]]
name = "web"
policy = "{policy}"
  [[vms.disks]]
  name = "os"
  path = "{tmp_path / "web.img"}"
"""


def _points_on_five_days(tmp_path: Path, ctx: service.Context) -> list[str]:
    """One real backup, then copies of its point dated one to four days earlier."""
    disk = tmp_path / "web.img"
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
        f.write(os.urandom(1 << 20))
    inventory = parse_inventory(_inventory(tmp_path, "nightly", 30), "inv.toml")
    point = service.run_vm_backup(ctx, inventory, "web")
    vault = ctx.open_vault(load_index=False)
    for days in range(1, 5):
        created = datetime.now(UTC) - timedelta(days=days)
        vault.put_point({**point, "id": new_point_id(created), "created": created.isoformat()})
    service.reindex(ctx)
    assert len(vault.point_ids()) == 5
    return vault.point_ids()


def _env(ctx: service.Context, inventory: Path) -> dict[str, str]:
    return {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_INVENTORY": str(inventory),
    }


def _alerts(ctx: service.Context) -> list[str]:
    vault = ctx.open_vault(load_index=False)
    return [a.kind for a in list_alerts(ctx.catalog(), vault.config.vault_id, limit=500)[1]]


@pytest.mark.parametrize("immutability", ["on", "locked"])
def test_renaming_the_policy_does_not_shorten_retention(
    tmp_path: Path, ctx: service.Context, immutability: str
) -> None:
    ids = _points_on_five_days(tmp_path, ctx)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(_inventory(tmp_path, "nightly", 30))
    env = _env(ctx, inventory)
    first = run_cli("prune", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["vms"]["web"]["prune"] == []
    assert run_cli("vault", "immutability", immutability, env=env).returncode == 0

    inventory.write_text(_inventory(tmp_path, "renamed", 2))  # a new name, a shorter retention
    prune = run_cli("prune", env=env)
    assert prune.returncode == 2
    assert "web (daily_days)" in prune.stderr and len(prune.stderr.strip().splitlines()) == 1
    assert ctx.open_vault(load_index=False).point_ids() == ids  # nothing deleted
    assert "retention_shortened" in _alerts(ctx)

    # the maintenance job goes through the same guard
    vault = ctx.open_vault(load_index=False)
    queue = JobQueue(ctx.catalog(), vault.config.vault_id)
    job_id = queue.enqueue("maintenance", None, {})
    with pytest.raises(ImmutableVaultError):
        run_maintenance(ctx, parse_inventory(inventory.read_text(), str(inventory)), queue, job_id)
    assert ctx.open_vault(load_index=False).point_ids() == ids

    # a longer retention under yet another name is accepted, and becomes the floor
    inventory.write_text(_inventory(tmp_path, "longer", 60))
    assert run_cli("prune", env=env).returncode == 0
    inventory.write_text(_inventory(tmp_path, "nightly", 30))
    assert run_cli("prune", env=env).returncode == 2
    assert ctx.open_vault(load_index=False).point_ids() == ids


def test_the_api_refuses_an_inventory_that_shortens_a_vms_retention(
    tmp_path: Path, ctx: service.Context
) -> None:
    ids = _points_on_five_days(tmp_path, ctx)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(_inventory(tmp_path, "nightly", 30))
    service.run_prune(ctx, parse_inventory(inventory.read_text(), "inv.toml"))
    protection.set_vault_immutability(ctx.open_vault(load_index=False), "locked")
    config = ServerConfig(
        ctx.vault_path, ctx.catalog_url, inventory=str(inventory), scheduler=False, worker=False
    )
    with TestClient(create_app(config)) as client:
        token = Accounts(ctx.catalog()).create_token("admin", "admin")[0]
        headers = {"Authorization": f"Bearer {token}"}
        shorter = {"toml": _inventory(tmp_path, "renamed", 2)}
        answer = client.put("/api/v1/inventory", headers=headers, json=shorter)
        assert answer.status_code == 409, answer.text
        error = answer.json()["error"]
        assert error["code"] == "immutable_vault" and "web" in error["message"]
        assert "nightly" in inventory.read_text()  # the file is untouched
        longer = {"toml": _inventory(tmp_path, "renamed", 40)}
        assert client.put("/api/v1/inventory", headers=headers, json=longer).status_code == 200
    assert ctx.open_vault(load_index=False).point_ids() == ids


def test_without_immutability_a_rename_shortens_with_an_alert_per_vm(
    tmp_path: Path, ctx: service.Context
) -> None:
    _points_on_five_days(tmp_path, ctx)
    service.run_prune(ctx, parse_inventory(_inventory(tmp_path, "nightly", 30), "a.toml"))
    renamed = parse_inventory(_inventory(tmp_path, "renamed", 2), "b.toml")
    result = service.run_prune(ctx, renamed)
    assert result["vms"]["web"]["retention_shortened"] == ["daily_days"]
    assert len(result["vms"]["web"]["prune"]) == 3  # allowed: the vault is not immutable
    assert "retention_shortened" in _alerts(ctx)


def test_a_vault_with_per_policy_records_is_guarded_too(
    tmp_path: Path, ctx: service.Context
) -> None:
    """Vaults written before per-VM records: the VM's policy record stands in for its own."""
    ids = _points_on_five_days(tmp_path, ctx)
    vault = ctx.open_vault(load_index=False)
    doc = protection.settings(vault)
    doc["retention"] = {"nightly": {"daily_days": 30}}
    doc["immutability"] = "locked"
    protection._save_settings(vault, doc)
    shorter = parse_inventory(_inventory(tmp_path, "nightly", 2), "inv.toml")
    with pytest.raises(ImmutableVaultError, match="web"):
        service.run_prune(ctx, shorter)
    assert vault.point_ids() == ids


def test_a_non_utf8_inventory_is_one_error_line(tmp_path: Path, ctx: service.Context) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_bytes(b"[policies.x]\nname = '\xff\xfe'\n")
    result = run_cli("vm", "list", env=_env(ctx, inventory))
    assert result.returncode == 2
    assert "not UTF-8" in result.stderr and len(result.stderr.strip().splitlines()) == 1
