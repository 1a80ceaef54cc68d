"""The instant-restore snapshots kept beside a VM's disks stay within bounds: what the
policy needs, the VM's and its pool's caps, and the file system's free space; and they
are reported (`vm show`, the plan)."""

from __future__ import annotations

import html
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from support.cli import run_cli
from support.fskit import reflink_xfs, tmpfs
from support.serverkit import make_site
from vmvault.alerts.store import list_alerts
from vmvault.app.context import Context
from vmvault.app.snapshots import bound_after_backup
from vmvault.app.vm_backup import run_vm_backup
from vmvault.inventory import load_inventory, parse_inventory
from vmvault.server.app import create_app
from vmvault.snapshot import instant

MiB = 1024 * 1024


def _inventory(
    root: Path, *, vm_cap: str = "", pool_cap: str = "", days: int = 2, snapshot: str = "copy"
) -> str:
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
snapshot = "{snapshot}"
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
    with tmpfs(tmp_path / "small", "20m") as small:
        inv = parse_inventory(_inventory(small, days=5), "inv.toml")
        points = [run_vm_backup(ctx, inv, "web01")["id"] for _ in range(3)]
        # 2 disks (8 MiB, 4 MiB of data) and 3 snapshots fit; then other files fill it up
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        with open(small / "filler", "wb") as f:
            f.write(b"\1" * (free - MiB))
        vault = ctx.open_vault(load_index=False)
        bound_after_backup(ctx, vault, inv, inv.vm("web01"))  # as after the next backup
        st = os.statvfs(small)
        assert st.f_bavail / st.f_blocks >= instant.LOW_SPACE_FRACTION
        assert _kept(small, "web01") == points[1:]  # the oldest went first
        _, alerts = list_alerts(ctx.catalog(), vault.config.vault_id)
        [low] = [a.message for a in alerts if a.kind == "instant_restore_space_low"]
        # the free space before the cut and after it, not a contradiction
        assert re.fullmatch(
            f"the file system of {small} had [0-9] % free \\(needs 10 %\\); web01's "
            "instant-restore snapshots there were cut from 3 to 2, now 1[0-9] % free",
            low,
        ), low


def test_vm_show_and_plan_report_the_snapshots(ctx: Context, tmp_path: Path) -> None:
    text = _inventory(tmp_path, pool_cap="instant_restore_max_gib = 1")
    (tmp_path / "inv.toml").write_text(text)
    run_vm_backup(ctx, parse_inventory(text, "inv.toml"), "web01")
    shown = run_cli("vm", "show", "web01", "--inventory", str(tmp_path / "inv.toml"))
    assert shown.returncode == 0, shown.stderr
    assert (
        "instant-restore snapshots: 1 of at most 2 kept (fewer backups in the last 2 days), "
        "2.0 MiB beside the disks"
    ) in shown.stdout
    planned = run_cli("plan", "--inventory", str(tmp_path / "inv.toml"), "--json")
    assert planned.returncode == 0, planned.stderr
    held = json.loads(planned.stdout)["instant_restore"]["fast"]
    assert held["bytes"] >= 2 * MiB and held["cap_bytes"] == 1024**3


def test_vm_show_says_why_fewer_are_kept(ctx: Context, tmp_path: Path) -> None:
    # Each snapshot holds 2 MiB; the pool's cap has room for one of the two the policy keeps.
    text = _inventory(tmp_path, pool_cap="instant_restore_max_gib = 0.003")
    (tmp_path / "inv.toml").write_text(text)
    inv = parse_inventory(text, "inv.toml")
    run_vm_backup(ctx, inv, "web01")
    run_vm_backup(ctx, inv, "web02")  # the pool's cap: web01's snapshot goes
    run_vm_backup(ctx, inv, "web01")  # and now web02's
    shown = {
        vm: run_cli("vm", "show", vm, "--inventory", str(tmp_path / "inv.toml"), "--json")
        for vm in ("web01", "web02")
    }
    web01, web02 = (json.loads(s.stdout)["instant_restore"] for s in shown.values())
    assert (web01["points"], web01["why_fewer"]) == (1, "cut by pool fast's cap of 0.003 GiB")
    assert (web02["points"], web02["why_fewer"]) == (0, "cut by pool fast's cap of 0.003 GiB")
    line = run_cli("vm", "show", "web02", "--inventory", str(tmp_path / "inv.toml"))
    assert (
        "instant-restore snapshots: 0 of at most 2 kept (cut by pool fast's cap of 0.003 GiB)"
    ) in line.stdout

    capped = tmp_path / "capped"  # the VM's own cap, with room for none
    capped.mkdir()
    text = _inventory(capped, vm_cap="instant_restore_max_gib = 0.001")
    inv = parse_inventory(text, "inv.toml")
    run_vm_backup(ctx, inv, "web01")
    (capped / "inv.toml").write_text(text)
    shown_capped = run_cli("vm", "show", "web01", "--inventory", str(capped / "inv.toml"), "--json")
    doc = json.loads(shown_capped.stdout)["instant_restore"]
    assert (doc["points"], doc["why_fewer"]) == (0, "cut by web01's cap of 0.001 GiB")
    # the notes of why beside the snapshots are not points: expiry passes them by
    assert instant.expire([str(capped / "web01.img")], 2, datetime.now(UTC)) == []


def test_planted_notes_are_never_followed_or_read_blocking(ctx: Context, tmp_path: Path) -> None:
    """The notes of why snapshots were cut lie in the VMs' storage folder: a symlink planted
    under a note's name is replaced, never written through; a FIFO there is not read."""
    text = _inventory(tmp_path, pool_cap="instant_restore_max_gib = 0.003")
    (tmp_path / "inv.toml").write_text(text)
    inv = parse_inventory(text, "inv.toml")
    store = tmp_path / instant.INSTANT_DIR
    store.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (store / ".cut-web01").symlink_to(victim)
    os.mkfifo(store / ".cut-web02")
    run_vm_backup(ctx, inv, "web01")
    run_vm_backup(ctx, inv, "web02")  # the pool's cap: web01's snapshot goes, noted
    assert victim.read_text() == "keep me"
    assert (store / ".cut-web01").is_file() and not (store / ".cut-web01").is_symlink()
    shown = run_cli("vm", "show", "web02", "--inventory", str(tmp_path / "inv.toml"), "--json")
    assert shown.returncode == 0, shown.stderr  # the FIFO named .cut-web02 did not hang it
    assert not [p for p in store.iterdir() if p.name.endswith(".tmp")]


def test_reflink_snapshots_count_only_the_blocks_they_hold(ctx: Context, tmp_path: Path) -> None:
    with reflink_xfs(tmp_path) as xfs:
        text = _inventory(xfs, snapshot="reflink", pool_cap="instant_restore_max_gib = 1")
        (tmp_path / "inv.toml").write_text(text)
        inv = parse_inventory(text, "inv.toml")
        disk = str(xfs / "web01.img")
        run_vm_backup(ctx, inv, "web01")
        os.sync()
        notes = 64 * 1024  # at most: the small .vm file in each point's folder
        assert instant.usage("web01", [disk])["bytes"] < notes  # all shared with the disk
        with open(disk, "r+b") as f:  # the VM writes: the snapshot's old blocks are its own
            f.write(os.urandom(MiB))
        run_vm_backup(ctx, inv, "web01")  # a clone of the disk as it is now: shared
        os.sync()
        assert MiB <= instant.usage("web01", [disk])["bytes"] < MiB + notes
        planned = run_cli("plan", "--inventory", str(tmp_path / "inv.toml"), "--json")
        assert MiB <= json.loads(planned.stdout)["instant_restore"]["fast"]["bytes"] < MiB + notes


def test_the_dashboard_and_the_api_say_why_fewer_are_kept(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", backup=False)
    inventory = Path(site.config.inventory)
    text = inventory.read_text().replace(
        "retention = { daily_days = 7 }", "retention = { daily_days = 7, instant_restore_days = 2 }"
    )
    text = text.replace('policy = "nightly"', 'policy = "nightly"\nsnapshot = "copy"', 1)
    text = text.replace("egress_mb_per_s = 200", "instant_restore_max_gib = 0.0001")
    inventory.write_text(text)
    run_vm_backup(site.ctx, load_inventory(str(inventory)), "web01")  # more than the cap
    with TestClient(create_app(site.config)) as client:
        row = client.get("/api/v1/vms/web01", headers=site.auth("reader")).json()
        why = "cut by pool fast's cap of 0.0001 GiB"
        assert (row["instant_restore"]["points"], row["instant_restore"]["why_fewer"]) == (0, why)
        client.post("/login", data={"token": site.tokens["reader"]})
        page = client.get("/vms/web01").text
        assert f"0 of at most 2 ({why})," in html.unescape(page)
