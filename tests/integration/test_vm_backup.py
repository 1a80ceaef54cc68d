"""Backing up whole VMs from the inventory: parallel disks, excluded temporary disk, stored
config, snapshot providers and the consistency level reached."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli, same_content
from vmvault.app.context import Context
from vmvault.app.restore import run_restore
from vmvault.app.vm_backup import run_vm_backup
from vmvault.app.vm_restore import run_vm_restore
from vmvault.errors import Conflict, FormatMismatch, NotFound, UsageError
from vmvault.inventory import parse_inventory

MiB = 1 << 20


def _write(path: Path, size: int, chunks: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks:
            f.seek(offset)
            f.write(data)
    return path


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o700)
    return str(path)


def _inventory(tmp_path: Path, state: str, extra: str = "") -> str:
    os_disk = _write(tmp_path / "os.img", 8 * MiB, [(MiB, os.urandom(2 * MiB))])
    data = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), "16M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 4M 1M", str(data)],
        check=True,
        capture_output=True,
    )
    temp = _write(tmp_path / "resource.img", 4 * MiB, [(0, b"scratch" * 1000)])
    return f"""
[pools.local]
egress_mb_per_s = 200

[[vms]]
name = "web01"
state = "{state}"
{extra}
  [[vms.disks]]
  name = "os"
  path = "{os_disk}"
  role = "os"
  pool = "local"
  [[vms.disks]]
  name = "data"
  path = "{data}"
  format = "qcow2"
  pool = "local"
  [[vms.disks]]
  name = "resource"
  path = "{temp}"
  role = "temporary"
"""


def test_stopped_vm_backup_is_crash_consistent_and_excludes_temp(
    tmp_path: Path, ctx: Context
) -> None:
    inv = parse_inventory(_inventory(tmp_path, "stopped"), "inv.toml")
    point = run_vm_backup(ctx, inv, "web01")
    assert [d["name"] for d in point["disks"]] == ["os", "data"]
    assert [d["name"] for d in point["excluded"]] == ["resource"]
    assert point["consistency"]["level"] == "crash"
    assert "stopped" in point["consistency"]["reason"]
    assert point["vm_config"]["name"] == "web01" and len(point["vm_config"]["disks"]) == 3
    assert point["meta"]["snapshot"] == "in-place"
    assert point["disks"][0]["source"] == str(tmp_path / "os.img")
    out = tmp_path / "os-restored.img"
    run_restore(ctx, point["id"], str(out), disk="os")
    assert same_content(tmp_path / "os.img", out)
    data_out = tmp_path / "data-restored.qcow2"
    run_restore(ctx, point["id"], str(data_out), disk="data", target_format="qcow2")
    compare = subprocess.run(
        ["qemu-img", "compare", str(tmp_path / "data.qcow2"), str(data_out)],
        capture_output=True,
        check=False,
    )
    assert compare.returncode == 0


def test_inventory_disk_formats_are_detected_or_checked(tmp_path: Path, ctx: Context) -> None:
    text = _inventory(tmp_path, "stopped")
    undeclared = text.replace('  format = "qcow2"\n', "")
    point = run_vm_backup(ctx, parse_inventory(undeclared, "inv.toml"), "web01")
    formats = {d["name"]: (d["format"], d["format_from"]) for d in point["disks"]}
    assert formats == {"os": ("raw", "detected"), "data": ("qcow2", "detected")}

    wrong = text.replace('format = "qcow2"', 'format = "raw"')
    with pytest.raises(FormatMismatch) as refused:
        run_vm_backup(ctx, parse_inventory(wrong, "inv.toml"), "web01")
    assert refused.value.message.startswith(
        f"inv.toml: vms['web01'].disks['data']: disk {tmp_path / 'data.qcow2'} is a qcow2 "
        "image, not raw (qemu-img finds a qcow2 header): "
        'set format = "qcow2" to read it as qcow2, or set force_format = true'
    )
    forced = wrong.replace('format = "raw"', 'format = "raw"\n  force_format = true')
    point = run_vm_backup(ctx, parse_inventory(forced, "inv.toml"), "web01")
    assert (point["disks"][1]["format"], point["disks"][1]["format_from"]) == ("raw", "forced")
    out = tmp_path / "data-bytes.img"
    run_restore(ctx, point["id"], str(out), disk="data")
    assert same_content(tmp_path / "data.qcow2", out)


def test_running_vm_with_scripts_is_application_consistent(tmp_path: Path, ctx: Context) -> None:
    log = tmp_path / "log"
    pre = _script(tmp_path / "pre.sh", f"echo pre >> {log}")
    post = _script(tmp_path / "post.sh", f"echo post >> {log}")
    config = tmp_path / "VMSnapshotScriptPluginConfig.json"
    config.write_text(
        json.dumps(
            {
                "pluginName": "ScriptRunner",
                "preScriptLocation": pre,
                "postScriptLocation": post,
                "timeoutInSeconds": 10,
            }
        )
    )
    config.chmod(0o600)
    extra = f'snapshot = "copy"\nscripts = "{config}"'
    inv = parse_inventory(_inventory(tmp_path, "running", extra), "inv.toml")
    point = run_vm_backup(ctx, inv, "web01")
    assert point["consistency"]["level"] == "application", point["consistency"]
    assert log.read_text().split() == ["pre", "post"]
    assert point["meta"]["snapshot"] == "copy"
    assert not list(tmp_path.glob(".vmvault-snap-*"))  # the snapshot was removed


def test_running_vm_failing_prescript_falls_back_and_says_why(tmp_path: Path, ctx: Context) -> None:
    pre = _script(tmp_path / "pre.sh", "echo 'database busy' >&2; exit 4")
    post = _script(tmp_path / "post.sh", "exit 0")
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"preScriptLocation": pre, "postScriptLocation": post}))
    config.chmod(0o600)
    extra = f'snapshot = "copy"\nscripts = "{config}"'
    inv = parse_inventory(_inventory(tmp_path, "running", extra), "inv.toml")
    point = run_vm_backup(ctx, inv, "web01")
    assert point["consistency"]["level"] in ("file-system", "crash")
    assert "pre-script" in point["consistency"]["reason"].lower()


def test_vm_backup_cli(tmp_path: Path, ctx: Context) -> None:
    inv_path = tmp_path / "inv.toml"
    inv_path.write_text(_inventory(tmp_path, "stopped"))
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_INVENTORY": str(inv_path),
    }
    before = run_cli("vm", "show", "web01", env=env)
    assert before.returncode == 0, before.stderr
    assert "last backup: never" in before.stdout
    doc = json.loads(run_cli("vm", "show", "web01", "--json", env=env).stdout)
    assert (doc["last_backup"], doc["last_point"]) == (None, None)
    text = run_cli("vm", "backup", "web01", env=env)
    assert text.returncode == 0, text.stderr
    assert (
        "excluded: resource (temporary disk" in text.stdout and "consistency: crash" in text.stdout
    )
    [point] = json.loads(run_cli("list", "--json", env=env).stdout)["points"]
    doc = json.loads(run_cli("vm", "show", "web01", "--json", env=env).stdout)
    assert (doc["last_backup"], doc["last_point"]) == (point["completed"], point["id"])
    after = run_cli("vm", "show", "web01", env={**env, "COLUMNS": "200"})
    assert f"(point {point['id']})" in after.stdout and "last backup: 20" in after.stdout
    unknown = run_cli("vm", "backup", "db01", env=env)
    assert unknown.returncode == 2 and "no VM named 'db01'" in unknown.stderr


def test_restore_as_a_new_vm_refuses_the_name_of_an_existing_vm(
    tmp_path: Path, ctx: Context
) -> None:
    text = _inventory(tmp_path, "stopped")
    retired_disk = _write(tmp_path / "old01.img", 4 * MiB, [(0, os.urandom(MiB))])
    with_old = (
        text
        + f"""
[[vms]]
name = "old01"
  [[vms.disks]]
  name = "os"
  path = "{retired_disk}"
"""
    )
    run_vm_backup(ctx, parse_inventory(with_old, "inv.toml"), "old01")
    inv_path = tmp_path / "inv.toml"
    inv_path.write_text(text)  # old01 left the inventory; its points stay in the vault
    run_vm_backup(ctx, parse_inventory(text, str(inv_path)), "web01")
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_INVENTORY": str(inv_path),
    }
    target = tmp_path / "restored"
    for name, says in [
        ("web01", "a VM named 'web01' exists already; choose another name"),
        (
            "old01",
            f"a VM named 'old01' exists in the vault (its recovery points or settings), "
            f"though not in {inv_path}; choose another name",
        ),
    ]:
        refused = run_cli("vm", "restore", "web01", "--as", name, "--to", str(target), env=env)
        assert refused.returncode == 2
        assert refused.stderr == f"error: {says}\n"
        as_json = run_cli(
            "vm", "restore", "web01", "--as", name, "--to", str(target), "--json", env=env
        )
        assert json.loads(as_json.stdout)["error"]["code"] == "conflict"
    assert not target.exists()  # no disk, no inventory entry
    # refused before it started: no failed restore job in the history
    assert [j.kind for j in ctx.catalog().jobs(_vault_id(ctx))] == ["backup", "backup"]
    done = run_cli("vm", "restore", "web01", "--as", "web02", "--to", str(target), env=env)
    assert done.returncode == 0, done.stderr
    assert ctx.catalog().jobs(_vault_id(ctx))[0].kind == "restore"


def test_restore_as_a_new_vm_refuses_files_in_its_way_before_restoring(
    tmp_path: Path, ctx: Context
) -> None:
    """A file the new VM would get (its .toml, a disk's image) already in --to is refused
    before any disk is restored, naming its real path; no job is recorded. With --force the
    restore replaces it, and says what it restored where."""
    inv_path = tmp_path / "inv.toml"
    inv_path.write_text(_inventory(tmp_path, "stopped"))
    point = run_vm_backup(ctx, parse_inventory(inv_path.read_text(), str(inv_path)), "web01")
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_INVENTORY": str(inv_path),
        "COLUMNS": "60",  # paths are printed whole, never wrapped
    }
    target = tmp_path / "restored"
    target.mkdir()
    args = ("vm", "restore", "web01", "--as", "db01-copy", "--to", str(target))
    placed: list[Path] = []
    for name in ("db01-copy.toml", "db01-copy-data.qcow2"):  # the disks' names checked first
        in_the_way = target / name
        in_the_way.write_text("mine\n")
        placed.append(in_the_way)
        refused = run_cli(*args, env=env)
        assert refused.returncode == 2
        assert refused.stderr == f"error: {in_the_way} exists: give --force to replace it\n"
        as_json = json.loads(run_cli(*args, "--json", env=env).stdout)
        assert as_json["error"]["code"] == "target_exists"
        assert sorted(target.iterdir()) == sorted(placed)  # nothing restored, nothing lost
        assert all(p.read_text() == "mine\n" for p in placed)
    assert [j.kind for j in ctx.catalog().jobs(_vault_id(ctx))] == ["backup"]

    forced = run_cli(*args, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    os_image, data_image = target / "db01-copy-os.img", target / "db01-copy-data.qcow2"
    assert forced.stdout.splitlines() == [
        f"restored point {point['id']} of web01",
        f"restored os -> {os_image}",
        f"restored data -> {data_image}",
        f"new VM db01-copy: inventory entry in {target / 'db01-copy.toml'}",
    ]
    assert (target / "db01-copy.toml").read_text().splitlines()[:2] == [
        "[[vms]]",
        'name = "db01-copy"',  # name first; no empty table (tags = {  }) below
    ]
    assert "{  }" not in (target / "db01-copy.toml").read_text()
    compare = subprocess.run(
        ["qemu-img", "compare", str(tmp_path / "data.qcow2"), str(data_image)], check=False
    )
    assert compare.returncode == 0


def test_restore_vm_as_new_vm_and_in_place(tmp_path: Path, ctx: Context) -> None:
    text = _inventory(tmp_path, "stopped")
    inv = parse_inventory(text, "inv.toml")
    point = run_vm_backup(ctx, inv, "web01")
    original = (tmp_path / "os.img").read_bytes()

    new = run_vm_restore(ctx, inv, "web01", new_name="web01-copy", directory=str(tmp_path / "copy"))
    assert new["point"] == point["id"]
    paths = {d["name"]: Path(d["path"]) for d in new["disks"]}
    assert paths["os"].read_bytes() == original
    assert paths["data"].suffix == ".qcow2"
    compare = subprocess.run(
        ["qemu-img", "compare", str(tmp_path / "data.qcow2"), str(paths["data"])],
        capture_output=True,
        check=False,
    )
    assert compare.returncode == 0
    both = parse_inventory(text + "\n" + Path(new["inventory"]).read_text(), "both.toml")
    copy = both.vm("web01-copy")
    assert [d.path for d in copy.disks] == [str(paths["os"]), str(paths["data"])]
    assert copy.state.value == "stopped"
    # the rules the API checks before queueing a restore, the same errors here
    with pytest.raises(Conflict, match="exists already"):
        run_vm_restore(ctx, inv, "web01", new_name="web01", directory=str(tmp_path / "c2"))
    with pytest.raises(NotFound, match="no pool named 'nowhere'"):
        run_vm_restore(
            ctx, inv, "web01", new_name="w2", directory=str(tmp_path / "c2"), target_pool="nowhere"
        )
    assert not (tmp_path / "c2").exists()

    with open(tmp_path / "os.img", "r+b") as f:  # the VM breaks after the backup
        f.write(b"\xde\xad" * 4096)
    with pytest.raises(UsageError, match="--yes"):
        run_vm_restore(ctx, inv, "web01", point_ref=point["id"], in_place=True)
    done = run_vm_restore(ctx, inv, "web01", point_ref=point["id"], in_place=True, confirmed=True)
    assert (tmp_path / "os.img").read_bytes() == original
    safety = ctx.open_vault().get_point(done["safety_point"])
    assert safety["vm"] == "web01"  # the broken state was kept before being replaced

    running = parse_inventory(text.replace('state = "stopped"', 'state = "running"'), "i.toml")
    history = [(j.id, j.state) for j in ctx.catalog().jobs(_vault_id(ctx))]
    with pytest.raises(UsageError, match="stop it"):
        run_vm_restore(ctx, running, "web01", in_place=True, confirmed=True)
    with pytest.raises(Conflict, match="exists already"):
        run_vm_restore(ctx, inv, "web01", new_name="web01", directory=str(tmp_path / "c2"))
    # requests refused as they stand leave the job history as it was
    assert [(j.id, j.state) for j in ctx.catalog().jobs(_vault_id(ctx))] == history


def _vault_id(ctx: Context) -> str:
    return ctx.open_vault(load_index=False).config.vault_id


def test_restore_onto_a_pool_being_backed_up_warns(tmp_path: Path, ctx: Context) -> None:
    import sys
    import time

    from vmvault.vault.locks import live_locks

    text = _inventory(tmp_path, "stopped")
    with open(tmp_path / "os.img", "r+b") as f:  # enough data to outlast a 4 MiB burst
        f.seek(0)
        f.write(os.urandom(24 * MiB))
    inv_path = tmp_path / "inv.toml"
    inv_path.write_text(text)
    inv = parse_inventory(text, str(inv_path))
    run_vm_backup(ctx, inv, "web01")
    env = {
        **os.environ,
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_INVENTORY": str(inv_path),
    }
    backup = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from vmvault.cli.main import run; run()",
            "vm",
            "backup",
            "web01",
            "--full",
            "--limit-rate",
            "4",
            "--json",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not live_locks(ctx.backend()) and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = run_vm_restore(
            ctx, inv, "web01", new_name="copy1", directory=str(tmp_path / "c1"), target_pool="local"
        )
        assert backup.poll() is None, "the backup ended before the restore could overlap it"
        assert busy["warnings"] and "pool local is being backed up" in busy["warnings"][0]
    finally:
        _, err = backup.communicate(timeout=120)
    assert backup.returncode == 0, err
    calm = run_vm_restore(
        ctx, inv, "web01", new_name="copy2", directory=str(tmp_path / "c2"), target_pool="local"
    )
    assert calm["warnings"] == []
    lock_files = list((Path(ctx.vault_path) / "locks").glob("*"))
    assert not lock_files  # every lock released


def test_instant_restore_from_kept_snapshots(tmp_path: Path, ctx: Context) -> None:
    from datetime import UTC, datetime, timedelta

    from vmvault.snapshot import instant

    policy = (
        '[policies.p]\nschedule = { kind = "daily", time = "22:30" }\n'
        "retention = { instant_restore_days = 2 }\n"
    )
    text = policy + _inventory(tmp_path, "running", 'snapshot = "copy"\npolicy = "p"')
    inv = parse_inventory(text, "inv.toml")
    point = run_vm_backup(ctx, inv, "web01")
    kept = tmp_path / instant.INSTANT_DIR / point["id"]
    assert sorted(p.name for p in kept.iterdir() if p.name != instant.OWNER_FILE) == ["os"]
    before = (tmp_path / "os.img").read_bytes()
    with open(tmp_path / "os.img", "r+b") as f:  # the VM writes after the backup
        f.write(b"\x01" * 65536)
    fast = run_restore(ctx, point["id"], str(tmp_path / "a.img"), disk="os")
    assert fast.source == "instant" and (tmp_path / "a.img").read_bytes() == before
    with open(kept / "os", "r+b") as f:  # a damaged kept copy is never trusted
        f.seek(1 << 20)
        f.write(b"\xff" * 10)
    safe = run_restore(ctx, point["id"], str(tmp_path / "b.img"), disk="os")
    assert safe.source == "vault" and (tmp_path / "b.img").read_bytes() == before
    assert instant.expire([str(tmp_path / "os.img")], 2, datetime.now(UTC)) == []
    later = datetime.now(UTC) + timedelta(days=3)
    assert instant.expire([str(tmp_path / "os.img")], 2, later) == [point["id"]]
    assert not kept.exists()
