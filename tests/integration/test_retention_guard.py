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

from support.cli import cli_env, run_cli
from vmvault import protection
from vmvault.alerts.store import list_alerts
from vmvault.app.context import Context
from vmvault.app.protection import set_immutability
from vmvault.app.retention import run_maintenance, run_prune
from vmvault.app.vaults import reindex
from vmvault.app.vm_backup import run_vm_backup
from vmvault.inventory import parse_inventory
from vmvault.policy.errors import ImmutableVaultError
from vmvault.server.accounts import Accounts
from vmvault.server.app import create_app
from vmvault.server.state import ServerConfig
from vmvault.vault.config import new_point_id


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


def _points_on_five_days(tmp_path: Path, ctx: Context) -> list[str]:
    """One real backup, then copies of its point dated one to four days earlier."""
    disk = tmp_path / "web.img"
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
        f.write(os.urandom(1 << 20))
    inventory = parse_inventory(_inventory(tmp_path, "nightly", 30), "inv.toml")
    point = run_vm_backup(ctx, inventory, "web")
    vault = ctx.open_vault(load_index=False)
    for days in range(1, 5):
        created = datetime.now(UTC) - timedelta(days=days)
        vault.put_point({**point, "id": new_point_id(created), "created": created.isoformat()})
    reindex(ctx)
    assert len(vault.point_ids()) == 5
    return vault.point_ids()


def _prune(ctx: Context, inventory: Path, text: str) -> None:
    """``text`` written as the inventory, then pruned by it, as `vmvault prune` would."""
    inventory.write_text(text)
    run_prune(ctx, parse_inventory(text, str(inventory)))


def _alerts(ctx: Context) -> list[str]:
    vault = ctx.open_vault(load_index=False)
    return [a.kind for a in list_alerts(ctx.catalog(), vault.config.vault_id, limit=500)[1]]


@pytest.mark.parametrize("immutability", ["on", "locked"])
def test_renaming_the_policy_does_not_shorten_retention(
    tmp_path: Path, ctx: Context, immutability: str
) -> None:
    ids = _points_on_five_days(tmp_path, ctx)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(_inventory(tmp_path, "nightly", 30))
    env = cli_env(ctx, inventory)
    first = run_cli("prune", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["vms"]["web"]["prune"] == []
    set_immutability(ctx, immutability, retain_existing=True)  # as `vmvault vault immutability`

    inventory.write_text(_inventory(tmp_path, "renamed", 2))  # a new name, a shorter retention
    prune = run_cli("prune", env=env)
    assert prune.returncode == 2
    assert "web (daily_days)" in prune.stderr and len(prune.stderr.strip().splitlines()) == 1
    assert ctx.open_vault(load_index=False).point_ids() == ids  # nothing deleted
    assert "retention_shortened" in _alerts(ctx)

    # the maintenance job goes through the same guard
    with pytest.raises(ImmutableVaultError):
        run_maintenance(ctx, parse_inventory(inventory.read_text(), str(inventory)))
    assert ctx.open_vault(load_index=False).point_ids() == ids

    # a longer retention under yet another name is accepted, and becomes the floor (the
    # guard's CLI exit code and line are checked above: in-process from here)
    _prune(ctx, inventory, _inventory(tmp_path, "longer", 60))
    with pytest.raises(ImmutableVaultError, match=r"web \(daily_days\)"):
        _prune(ctx, inventory, _inventory(tmp_path, "nightly", 30))
    assert ctx.open_vault(load_index=False).point_ids() == ids


def test_the_api_refuses_an_inventory_that_shortens_a_vms_retention(
    tmp_path: Path, ctx: Context
) -> None:
    ids = _points_on_five_days(tmp_path, ctx)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(_inventory(tmp_path, "nightly", 30))
    run_prune(ctx, parse_inventory(inventory.read_text(), "inv.toml"))
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
    tmp_path: Path, ctx: Context
) -> None:
    _points_on_five_days(tmp_path, ctx)
    run_prune(ctx, parse_inventory(_inventory(tmp_path, "nightly", 30), "a.toml"))
    renamed = parse_inventory(_inventory(tmp_path, "renamed", 2), "b.toml")
    result = run_prune(ctx, renamed)
    assert result["vms"]["web"]["retention_shortened"] == ["daily_days"]
    assert len(result["vms"]["web"]["prune"]) == 3  # allowed: the vault is not immutable
    assert "retention_shortened" in _alerts(ctx)


def test_a_vault_with_per_policy_records_is_guarded_too(tmp_path: Path, ctx: Context) -> None:
    """Vaults written before per-VM records: the VM's policy record stands in for its own."""
    ids = _points_on_five_days(tmp_path, ctx)
    vault = ctx.open_vault(load_index=False)
    doc = protection.settings(vault)
    doc["retention"] = {"nightly": {"daily_days": 30}}
    doc["immutability"] = "locked"
    protection.save_settings(vault, doc)
    shorter = parse_inventory(_inventory(tmp_path, "nightly", 2), "inv.toml")
    with pytest.raises(ImmutableVaultError, match="web"):
        run_prune(ctx, shorter)
    assert vault.point_ids() == ids


def test_a_non_utf8_inventory_is_one_error_line(tmp_path: Path, ctx: Context) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_bytes(b"[policies.x]\nname = '\xff\xfe'\n")
    result = run_cli("vm", "list", env=cli_env(ctx, inventory))
    assert result.returncode == 2
    assert "not UTF-8" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _two_policy_inventory(tmp_path: Path, web: tuple[str, int], db: tuple[str, int]) -> str:
    """Two VMs, each on its own policy (name, daily_days); the same name twice is one policy."""
    policies = {web[0]: web[1], db[0]: db[1]}
    text = "".join(
        f'\n[policies.{name}]\nschedule = {{ kind = "daily", time = "22:30", timezone = "UTC" }}\n'
        f"retention = {{ daily_days = {days} }}\n"
        for name, days in policies.items()
    )
    for vm, (policy, _) in (("web", web), ("db", db)):
        text += (
            f'\n[[vms]]\nname = "{vm}"\npolicy = "{policy}"\n  [[vms.disks]]\n'
            f'  name = "os"\n  path = "{tmp_path / "web.img"}"\n'
        )
    return text


def _legacy_locked_vault(ctx: Context, records: dict[str, int]) -> None:
    """The settings an older vmvault wrote: retention recorded per policy name only."""
    vault = ctx.open_vault(load_index=False)
    doc = protection.settings(vault)
    doc.pop("retention_by_vm", None)
    doc["retention"] = {name: {"daily_days": days} for name, days in records.items()}
    doc["immutability"] = "locked"
    protection.save_settings(vault, doc)


def test_an_old_vault_is_guarded_when_the_policy_is_renamed(tmp_path: Path, ctx: Context) -> None:
    """A vault with only per-policy records: a VM whose policy name has no record any more
    is held to the longest one recorded, through the API and the CLI; the unchanged
    inventory still prunes and moves the records to the VMs."""
    ids = _points_on_five_days(tmp_path, ctx)
    _legacy_locked_vault(ctx, {"nightly": 30})
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(_inventory(tmp_path, "nightly", 30))
    config = ServerConfig(
        ctx.vault_path, ctx.catalog_url, inventory=str(inventory), scheduler=False, worker=False
    )
    with TestClient(create_app(config)) as client:
        token = Accounts(ctx.catalog()).create_token("admin", "admin")[0]
        headers = {"Authorization": f"Bearer {token}"}
        renamed = {"toml": _inventory(tmp_path, "renamed", 2)}
        answer = client.put("/api/v1/inventory", headers=headers, json=renamed)
        assert answer.status_code == 409, answer.text
        assert "web" in answer.json()["error"]["message"]
    assert "nightly" in inventory.read_text()

    inventory.write_text(_inventory(tmp_path, "renamed", 2))
    env = cli_env(ctx, inventory)
    prune = run_cli("prune", env=env)
    assert prune.returncode == 2, prune.stdout
    assert "web (daily_days)" in prune.stderr and len(prune.stderr.strip().splitlines()) == 1
    assert ctx.open_vault(load_index=False).point_ids() == ids

    # the old vault keeps working (in-process from here: the CLI's refusal is checked above)
    _prune(ctx, inventory, _inventory(tmp_path, "nightly", 30))
    doc = protection.settings(ctx.open_vault(load_index=False))
    assert doc["retention_by_vm"]["web"]["daily_days"] == 30 and "retention" not in doc
    _prune(ctx, inventory, _inventory(tmp_path, "renamed", 30))  # now a rename alone is fine
    with pytest.raises(ImmutableVaultError, match=r"web \(daily_days\)"):
        _prune(ctx, inventory, _inventory(tmp_path, "renamed", 2))
    assert ctx.open_vault(load_index=False).point_ids() == ids


def test_an_old_vault_with_short_and_long_policies_keeps_working(
    tmp_path: Path, ctx: Context
) -> None:
    """Migration matches each VM to its policy's record: a short policy beside a long one is
    not held to the long one, and a new VM without points is not held to anything."""
    ids = _points_on_five_days(tmp_path, ctx)
    _legacy_locked_vault(ctx, {"nightly": 3, "yearly": 400})
    inv = parse_inventory(_two_policy_inventory(tmp_path, ("nightly", 3), ("fresh", 1)), "a")
    result = run_prune(ctx, inv)
    assert len(result["vms"]["web"]["prune"]) == 2  # 3 days kept of the 5: nothing early
    assert result["vms"]["db"]["prune"] == []
    assert len(ctx.open_vault(load_index=False).point_ids()) == len(ids) - 2


def test_every_way_of_shortening_a_vms_retention_is_refused(tmp_path: Path, ctx: Context) -> None:
    """Moving the VM to another policy, dropping its policy or the VM for a while, then
    coming back shorter: the VM's record holds; the other VM is not in the way."""
    ids = _points_on_five_days(tmp_path, ctx)
    both = _two_policy_inventory(tmp_path, ("nightly", 30), ("short", 2))
    run_prune(ctx, parse_inventory(both, "a"))
    protection.set_vault_immutability(ctx.open_vault(load_index=False), "locked")

    moved = _two_policy_inventory(tmp_path, ("short", 2), ("short", 2))
    with pytest.raises(ImmutableVaultError, match=r"web \(daily_days\)"):
        run_prune(ctx, parse_inventory(moved, "b"))

    no_policy = _inventory(tmp_path, "nightly", 30).replace('policy = "nightly"\n', "")
    assert run_prune(ctx, parse_inventory(no_policy, "c"))["vms"] == {}
    without_web = _two_policy_inventory(tmp_path, ("short", 2), ("short", 2))
    without_web = (
        without_web[: without_web.index('[[vms]]\nname = "web"')]
        + without_web[without_web.index('[[vms]]\nname = "db"') :]
    )
    assert "web" not in run_prune(ctx, parse_inventory(without_web, "d"))["vms"]
    for back in (moved, _two_policy_inventory(tmp_path, ("other", 2), ("short", 2))):
        with pytest.raises(ImmutableVaultError, match=r"web \(daily_days\)"):
            run_prune(ctx, parse_inventory(back, "e"))
    assert ctx.open_vault(load_index=False).point_ids() == ids


def test_a_refused_prune_alerts_once_per_vm(tmp_path: Path, ctx: Context) -> None:
    ids = _points_on_five_days(tmp_path, ctx)
    vault = ctx.open_vault(load_index=False)
    for point in [p for p in vault.points() if p["vm"] == "web"]:  # the same points for db
        created = datetime.fromisoformat(point["created"])
        db = {**point, "vm": "db", "id": new_point_id(created + timedelta(seconds=1))}
        vault.put_point(db)
    reindex(ctx)
    run_prune(ctx, parse_inventory(_two_policy_inventory(tmp_path, ("a", 30), ("b", 30)), "a"))
    protection.set_vault_immutability(vault, "locked")
    shorter = _two_policy_inventory(tmp_path, ("c", 2), ("d", 3))
    with pytest.raises(ImmutableVaultError, match=r"db \(daily_days\); web \(daily_days\)"):
        run_prune(ctx, parse_inventory(shorter, "b"))
    alerts = list_alerts(ctx.catalog(), vault.config.vault_id, limit=500)[1]
    refused = {a.vm: a.details for a in alerts if a.kind == "retention_shortened"}
    assert set(refused) == {"web", "db"}
    assert refused["web"] == {"policy": "c", "shortened": ["daily_days"], "refused": True}
    assert len(vault.point_ids()) == 2 * len(ids)


def test_the_api_records_the_retention_it_accepts(tmp_path: Path, ctx: Context) -> None:
    """Once the API accepted a longer retention, the points are kept for it: a later PUT
    cannot come back below it, even before any prune ran."""
    ids = _points_on_five_days(tmp_path, ctx)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(_inventory(tmp_path, "nightly", 30))
    run_prune(ctx, parse_inventory(inventory.read_text(), "inv.toml"))
    protection.set_vault_immutability(ctx.open_vault(load_index=False), "locked")
    config = ServerConfig(
        ctx.vault_path, ctx.catalog_url, inventory=str(inventory), scheduler=False, worker=False
    )
    with TestClient(create_app(config)) as client:
        token = Accounts(ctx.catalog()).create_token("admin", "admin")[0]
        headers = {"Authorization": f"Bearer {token}"}
        longer = {"toml": _inventory(tmp_path, "nightly", 40)}
        assert client.put("/api/v1/inventory", headers=headers, json=longer).status_code == 200
        back = {"toml": _inventory(tmp_path, "renamed", 35)}
        answer = client.put("/api/v1/inventory", headers=headers, json=back)
        assert answer.status_code == 409, answer.text
    assert "daily_days = 40" in inventory.read_text()
    assert ctx.open_vault(load_index=False).point_ids() == ids


def test_a_refused_maintenance_keeps_the_instant_restore_snapshots(
    tmp_path: Path, ctx: Context
) -> None:
    """instant_restore_days is part of the retention: the maintenance job must not expire
    the snapshots early before prune refuses the shorter retention."""
    ids = _points_on_five_days(tmp_path, ctx)
    longer = _inventory(tmp_path, "nightly", 30).replace(
        "{ daily_days", "{ instant_restore_days = 5, daily_days"
    )
    run_prune(ctx, parse_inventory(longer, "a"))
    vault = ctx.open_vault(load_index=False)
    protection.set_vault_immutability(vault, "locked")
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y%m%dT%H%M%S")
    snapshot = tmp_path / ".vmvault-instant" / f"{three_days_ago}.000000Z-0000"
    snapshot.mkdir(parents=True)
    shorter = _inventory(tmp_path, "renamed", 30).replace(
        "{ daily_days", "{ instant_restore_days = 1, daily_days"
    )
    with pytest.raises(ImmutableVaultError, match=r"web \(instant_restore_days\)"):
        run_maintenance(ctx, parse_inventory(shorter, "b"))
    assert snapshot.is_dir()
    assert vault.point_ids() == ids
