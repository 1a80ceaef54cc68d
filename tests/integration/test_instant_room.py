"""A backup that copies its disks makes room for the copy first: the VM's kept
instant-restore snapshots are conveniences, the backup is what matters (a real tmpfs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import cli_env, run_cli
from support.fskit import tmpfs
from vmvault.alerts.store import list_alerts
from vmvault.app.context import Context
from vmvault.app.vm_backup import run_vm_backup
from vmvault.inventory import parse_inventory
from vmvault.snapshot import instant

MiB = 1024 * 1024


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB file system holding a disk of 20 MiB: room for it and one copy only."""
    with tmpfs(tmp_path / "small", "48m") as mountpoint:
        with open(mountpoint / "web02.img", "wb") as f:
            f.write(os.urandom(20 * MiB))
        yield mountpoint


def _inventory(folder: Path) -> Path:
    path = folder.parent / "inv.toml"
    path.write_text(
        f"""
[policies.daily]
schedule = {{ kind = "daily", time = "22:00" }}
retention = {{ instant_restore_days = 2 }}

[[vms]]
name = "web02"
policy = "daily"
snapshot = "copy"
  [[vms.disks]]
  name = "os"
  path = "{folder / "web02.img"}"
"""
    )
    return path


def _low_space_alerts(ctx: Context) -> list[str]:
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    _, alerts = list_alerts(ctx.catalog(), vault_id)
    return [a.message for a in alerts if a.kind == "instant_restore_space_low"]


def test_old_snapshots_make_room_for_the_next_copy(ctx: Context, small: Path) -> None:
    env = cli_env(ctx, _inventory(small))
    first = run_cli("vm", "backup", "web02", env=env)
    assert first.returncode == 0, first.stderr
    second = run_cli("vm", "backup", "web02", env=env)
    assert second.returncode == 0, second.stderr  # was: "No space left on device"
    kept = [k.point_id for k in instant.kept_snapshots([str(small / "web02.img")])]
    assert len(kept) == 1  # the first backup's copy made room for the second's
    [message] = _low_space_alerts(ctx)
    assert f"the file system of {small} had " in message
    assert "too little for a copy of web02's disks (20.0 MiB) and 10 % kept free" in message
    assert "web02's instant-restore snapshots there were cut from 1 to 0" in message


def test_no_room_even_without_the_snapshots_fails_with_the_alert(ctx: Context, small: Path) -> None:
    inventory = parse_inventory(_inventory(small).read_text(), "inv.toml")
    run_vm_backup(ctx, inventory, "web02")
    with open(small / "web02.img", "ab") as f:  # the VM wrote more: 27 MiB, 1 MiB left free
        f.write(os.urandom(7 * MiB))
    failed = run_cli("vm", "backup", "web02", env=cli_env(ctx, small.parent / "inv.toml"))
    assert failed.returncode == 1
    *warned, error = failed.stderr.strip().splitlines()  # the warning is logged before
    assert error.startswith("error: copy of ") and error.endswith(": No space left on device")
    assert len(warned) == 1 and "still too little" in warned[0]
    assert instant.kept_snapshots([str(small / "web02.img")]) == []
    [message] = _low_space_alerts(ctx)
    assert "cut from 1 to 0" in message and "still too little: the copy may fail" in message
    assert not list(small.glob(".vmvault-snap-*"))  # the failed copy left nothing
