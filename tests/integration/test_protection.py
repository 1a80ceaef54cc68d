"""Stop protection (retain / delete), soft delete and undelete, purge, the immutable vault —
stored in the vault, applied by prune, the scheduler and the maintenance job."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli
from vmvault import protection
from vmvault.app.context import Context
from vmvault.app.retention import run_prune
from vmvault.app.vm_backup import run_vm_backup
from vmvault.inventory import Inventory, parse_inventory
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.scheduler import SchedulerState, tick
from vmvault.policy.errors import ImmutableVaultError, ProtectionStateError


def _text(tmp_path: Path) -> str:
    return f"""
[policies.nightly]
schedule = {{ kind = "daily", time = "22:30" }}
[[vms]]
name = "web"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "{tmp_path / "web.img"}"
"""


def _setup(tmp_path: Path, ctx: Context) -> tuple[Inventory, list[str]]:
    disk = tmp_path / "web.img"
    with open(disk, "wb") as f:
        f.truncate(4 << 20)
        f.write(os.urandom(1 << 20))
    inv = parse_inventory(_text(tmp_path), "inv.toml")
    ids = [run_vm_backup(ctx, inv, "web")["id"] for _ in range(2)]
    return inv, ids


def test_stop_with_retain_keeps_everything_and_stops_scheduling(
    tmp_path: Path, ctx: Context
) -> None:
    inv, _ = _setup(tmp_path, ctx)
    vault = ctx.open_vault(load_index=False)
    state = protection.stop(vault, "web", delete_data=False)
    assert state.status == "stopped-retain"
    later = datetime.now(UTC) + timedelta(days=90)
    plan = run_prune(ctx, inv, now=later)  # everything has expired by the policy...
    assert plan["vms"]["web"]["prune"] == []  # ...but retained data is never pruned
    queue = JobQueue(ctx.catalog(), vault.config.vault_id)
    state_ = SchedulerState()
    t0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    tick(queue, inv, state_, t0, vault=vault)
    assert [
        queue.get(j).kind for j in tick(queue, inv, state_, t0 + timedelta(hours=12), vault=vault)
    ] == ["maintenance"]  # no backup
    assert protection.resume(vault, "web").status == "protected"


def test_soft_delete_undelete_and_purge(tmp_path: Path, ctx: Context) -> None:
    _, ids = _setup(tmp_path, ctx)
    vault = ctx.open_vault(load_index=False)
    now = datetime.now(UTC)
    deleted = protection.stop(vault, "web", delete_data=True, now=now)
    assert deleted.status == "stopped-deleted" and deleted.purge_at == now + timedelta(days=14)
    assert protection.purge_due(vault, ["web"], now + timedelta(days=13)) == {}
    assert vault.point_ids() == ids  # recoverable meanwhile
    assert protection.recover(vault, "web", now + timedelta(days=13)).status == "stopped-retain"
    again = protection.stop(vault, "web", delete_data=True, now=now)
    assert protection.purge_due(vault, ["web"], again.purge_at) == {"web": 2}
    assert vault.point_ids() == []
    assert protection.state_of(vault, "web").status == "purged"
    with pytest.raises(ProtectionStateError):
        protection.recover(vault, "web", again.purge_at)


def test_immutable_vault_refuses_deletes(tmp_path: Path, ctx: Context) -> None:
    _, ids = _setup(tmp_path, ctx)
    vault = ctx.open_vault(load_index=False)
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }
    assert run_cli("vault", "immutability", "on", env=env).returncode == 0
    with pytest.raises(ImmutableVaultError):
        protection.stop(vault, "web", delete_data=True)
    forget = run_cli("forget", ids[0], env=env)
    assert forget.returncode == 2 and "immutable" in forget.stderr
    stop = run_cli("protection", "stop", "web", "--delete-data", "--json", env=env)
    assert stop.returncode == 2 and '"immutable_vault"' in stop.stdout
    assert run_cli("vault", "immutability", "off", env=env).returncode == 0
    assert run_cli("vault", "immutability", "locked", env=env).returncode == 0
    unlock = run_cli("vault", "immutability", "off", env=env)
    assert unlock.returncode == 2 and "locked" in unlock.stderr
    assert ctx.open_vault(load_index=False).point_ids() == ids
    assert run_cli("vault", "soft-delete", "30", env=env).returncode == 0
    assert protection.settings(vault)["soft_delete_days"] == 30
    too_short = run_cli("vault", "soft-delete", "7", env=env)
    assert too_short.returncode == 2 and "14 to 180" in too_short.stderr
    shown = run_cli("protection", "show", "web", env=env)
    assert shown.returncode == 0 and "web: protected" in shown.stdout


def test_immutable_vault_refuses_shortened_retention(tmp_path: Path, ctx: Context) -> None:
    inv, _ = _setup(tmp_path, ctx)
    assert run_prune(ctx, inv)["vms"]["web"]["retention_shortened"] == []
    shorter = parse_inventory(
        _text(tmp_path).replace(
            'time = "22:30" }', 'time = "22:30" }\nretention = { daily_days = 7 }'
        ),
        "inv.toml",
    )
    vault = ctx.open_vault(load_index=False)
    protection.set_vault_immutability(vault, "on")
    with pytest.raises(ImmutableVaultError, match="daily_days"):
        run_prune(ctx, shorter)
    protection.set_vault_immutability(vault, "off")
    done = run_prune(ctx, shorter)
    assert done["vms"]["web"]["retention_shortened"] == ["daily_days"]
