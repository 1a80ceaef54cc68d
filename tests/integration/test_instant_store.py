"""The instant-restore snapshots kept beside a VM's disks stay within bounds: what the
policy needs, the VM's and its pool's caps, and the file system's free space; and they
are reported (`vm show`, the plan)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support.cli import run_cli
from vmvault.alerts.store import list_alerts
from vmvault.app.context import Context
from vmvault.app.vm_backup import run_vm_backup
from vmvault.inventory import parse_inventory
from vmvault.snapshot import instant

MiB = 1024 * 1024


def _inventory(root: Path, *, vm_cap: str = "", pool_cap: str = "", days: int = 2) -> str:
    disks = []
    for vm in ("web01", "web02"):
        path = root / f"{vm}.img"
        with open(path, "wb") as f:
            f.write(os.urandom(2 * MiB))
            f.truncate(4 * MiB)
        disks.append(path)
    vms = "".join(
        f"""
[[vms]]
name = "{vm}"
policy = "daily"
snapshot = "copy"
{vm_cap if vm == "web01" else ""}
  [[vms.disks]]
  name = "os"
  path = "{path}"
  pool = "fast"
"""
        for vm, path in zip(("web01", "web02"), disks, strict=True)
    )
    return f"""
[pools.fast]
{pool_cap}

[policies.daily]
schedule = {{ kind = "daily", time = "22:00" }}
retention = {{ instant_restore_days = {days} }}
{vms}"""


def _kept(root: Path, vm: str) -> list[str]:
    return [k.point_id for k in instant.kept_snapshots([str(root / "x")]) if k.vm == vm]


def test_only_the_snapshots_the_policy_needs_are_kept(ctx: Context, tmp_path: Path) -> None:
    inv = parse_inventory(_inventory(tmp_path), "inv.toml")
    points = [run_vm_backup(ctx, inv, "web01")["id"] for _ in range(4)]
    other = run_vm_backup(ctx, inv, "web02")["id"]  # the same folder: its own count
    assert _kept(tmp_path, "web01") == points[-2:]  # daily, kept 2 days: 2 snapshots
    assert _kept(tmp_path, "web02") == [other]
    used = instant.usage("web01", [str(tmp_path / "web01.img")])
    assert used["points"] == 2 and used["bytes"] >= 2 * 2 * MiB


def test_caps_drop_the_oldest_first(ctx: Context, tmp_path: Path) -> None:
    # Each snapshot holds about 2 MiB of data (a 4 MiB disk with a hole).
    inv = parse_inventory(
        _inventory(tmp_path, vm_cap="instant_restore_max_gib = 0.0028", days=5), "inv.toml"
    )
    points = [run_vm_backup(ctx, inv, "web01")["id"] for _ in range(3)]
    assert _kept(tmp_path, "web01") == points[-1:]  # 3 MB: room for one

    pool = tmp_path / "pool"
    pool.mkdir()
    inv = parse_inventory(
        _inventory(pool, pool_cap="instant_restore_max_gib = 0.0047", days=5), "inv.toml"
    )
    first = run_vm_backup(ctx, inv, "web01")["id"]
    second = run_vm_backup(ctx, inv, "web02")["id"]
    third = run_vm_backup(ctx, inv, "web01")["id"]
    kept = {k.point_id for k in instant.kept_snapshots([str(pool / "x")])}
    assert first not in kept and {second, third} <= kept  # the pool's oldest went first


def test_a_file_system_running_low_drops_snapshots_and_warns(ctx: Context, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small)], check=True)
    try:
        inv = parse_inventory(_inventory(small, days=5), "inv.toml")
        for _ in range(3):
            run_vm_backup(ctx, inv, "web01")
        # 2 disks (8 MiB, 4 MiB of data) and 3 snapshots fit; then the space is taken
        filler = small / "filler"
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        with open(filler, "wb") as f:
            f.write(b"\1" * (free - 3 * MiB))
        last = run_vm_backup(ctx, inv, "web01")["id"]
        st = os.statvfs(small)
        assert st.f_bavail / st.f_blocks >= instant.LOW_SPACE_FRACTION
        assert last in _kept(small, "web01")  # the newest is the last to go
        vault_id = ctx.open_vault(load_index=False).config.vault_id
        _, alerts = list_alerts(ctx.catalog(), vault_id)
        low = [a for a in alerts if a.kind == "instant_restore_space_low"]
        assert low and "web01" in low[0].message
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_vm_show_and_plan_report_the_snapshots(ctx: Context, tmp_path: Path) -> None:
    text = _inventory(tmp_path, pool_cap="instant_restore_max_gib = 1")
    (tmp_path / "inv.toml").write_text(text)
    run_vm_backup(ctx, parse_inventory(text, "inv.toml"), "web01")
    shown = run_cli("vm", "show", "web01", "--inventory", str(tmp_path / "inv.toml"))
    assert shown.returncode == 0, shown.stderr
    assert "instant-restore snapshots: 1 of at most 2 kept, 2.0 MiB beside the disks" in (
        shown.stdout
    )
    planned = run_cli("plan", "--inventory", str(tmp_path / "inv.toml"), "--json")
    assert planned.returncode == 0, planned.stderr
    held = json.loads(planned.stdout)["instant_restore"]["fast"]
    assert held["bytes"] >= 2 * MiB and held["cap_bytes"] == 1024**3
