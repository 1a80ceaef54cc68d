"""Garbage collection: frees what no point uses, repacks partly dead packs, and never
removes a chunk a running backup needs (interleaved with real backups)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, same_content
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point
from vmvault.app.restore import run_restore
from vmvault.app.retention import run_prune
from vmvault.app.vaults import init_vault, run_check, run_gc
from vmvault.app.vm_backup import run_vm_backup
from vmvault.backends.local import BackendReadOnly
from vmvault.vault.locks import VaultLock, live_locks

MiB = testdisk.MiB


def vault_bytes(ctx: Context) -> int:
    return sum(f.stat().st_size for f in (Path(ctx.vault_path) / "packs").rglob("*") if f.is_file())


def _ctx(tmp_path: Path) -> Context:
    ctx = Context(str(tmp_path / "vault"), f"sqlite:///{tmp_path / 'c.db'}")
    init_vault(ctx, pack_target=1 * MiB)
    return ctx


def test_gc_frees_forgotten_points_and_keeps_the_rest(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    ctx = _ctx(tmp_path)
    a = make_image("a.img", size=16 * MiB, seed=1)
    b = make_image("b.img", size=16 * MiB, seed=2)
    first = run_backup(ctx, "vm-a", [DiskSpec("os", str(a))])
    kept = run_backup(ctx, "vm-b", [DiskSpec("os", str(b))])
    before = vault_bytes(ctx)
    assert run_gc(ctx, grace=0).deleted_packs == 0  # nothing is garbage yet
    forget_point(ctx, first["id"])
    report = run_gc(ctx, grace=0)
    assert report.deferred is None and report.deleted_packs > 0
    assert vault_bytes(ctx) < before * 0.7
    assert run_check(ctx, read_data=True).ok
    out = tmp_path / "b-restored.img"
    run_restore(ctx, kept["id"], str(out))
    assert same_content(b, out)
    assert not (Path(ctx.vault_path) / "gc" / "pending").exists()


def test_gc_repacks_partly_dead_packs(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    ctx = _ctx(tmp_path)
    image = make_image("a.img", size=24 * MiB)
    first = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    testdisk.mutate_disk(image, 40.0, seed=3, jobs=1)
    latest = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    forget_point(ctx, first["id"])
    report = run_gc(ctx, grace=0, repack_threshold=0.2)
    assert report.repacked_packs > 0 and report.bytes_freed > 0
    assert run_check(ctx, read_data=True).ok
    out = tmp_path / "restored.img"
    run_restore(ctx, latest["id"], str(out))
    assert same_content(image, out)


def test_grace_period_protects_young_packs(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    ctx = _ctx(tmp_path)
    image = make_image("a.img", size=8 * MiB)
    point = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    forget_point(ctx, point["id"])
    report = run_gc(ctx)  # default grace: an hour
    assert report.candidates == 0 and report.deleted_packs == 0


def test_gc_during_a_backup_never_removes_what_it_needs(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """A backup that dedups against chunks of a forgotten point runs while GC runs: GC
    announces, sees the backup's lock, and defers; the backup's point stays whole."""
    ctx = _ctx(tmp_path)
    image = make_image("a.img", size=96 * MiB)  # ~58 MB of data: the backup below lasts ~10 s
    old = run_backup(ctx, "vm-old", [DiskSpec("os", str(image))])
    forget_point(ctx, old["id"])  # its chunks are garbage now...
    clone = tmp_path / "clone.img"
    shutil.copyfile(image, clone)
    env = {
        **os.environ,
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }
    backup = subprocess.Popen(  # ...but this backup of identical data dedups against them
        [
            sys.executable,
            "-c",
            "from vmvault.cli.main import run; run()",
            "backup",
            str(clone),
            "--vm",
            "vm-new",
            "--disk-name",
            "os",
            "--limit-rate",
            "6",
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not live_locks(ctx.backend()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_locks(ctx.backend()), "the backup never took its lock"
    during = run_gc(ctx, grace=0)
    assert during.candidates > 0 and during.deferred and during.deleted_packs == 0
    _, err = backup.communicate(timeout=120)
    assert backup.returncode == 0, err
    after = run_gc(ctx, grace=0)  # the new point now uses those chunks
    assert after.deferred is None
    assert run_check(ctx, read_data=True).ok
    restored = tmp_path / "restored.img"
    run_restore(ctx, "latest", str(restored), vm="vm-new")
    assert same_content(clone, restored)


def test_backup_after_an_announced_collection_stores_doomed_chunks_again(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """A backup that starts after GC announced its plan must not reference the doomed
    packs: it stores those chunks again, and the sweep then removes the old copies."""
    ctx = _ctx(tmp_path)
    image = make_image("a.img", size=16 * MiB)
    old = run_backup(ctx, "vm-old", [DiskSpec("os", str(image))])
    forget_point(ctx, old["id"])
    with VaultLock(ctx.backend(), "restore"):  # someone is reading: GC defers its sweep
        assert run_gc(ctx, grace=0).deferred
        new = run_backup(ctx, "vm-new", [DiskSpec("os", str(image))])
    stats = new["disks"][0]["stats"]
    assert stats["deduplicated"] == 0 and stats["new"] > 0
    report = run_gc(ctx, grace=0)
    assert report.deleted_packs > 0
    assert run_check(ctx, read_data=True).ok
    out = tmp_path / "restored.img"
    run_restore(ctx, new["id"], str(out))
    assert same_content(image, out)


def test_prune_applies_the_vm_policy_then_gc_frees(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    from datetime import UTC, datetime, timedelta

    from vmvault.inventory import parse_inventory

    ctx = _ctx(tmp_path)
    image = make_image("a.img", size=8 * MiB)
    inventory = parse_inventory(
        f"""
[policies.nightly]
schedule = {{ kind = "daily", time = "22:30", timezone = "Europe/Berlin" }}
retention = {{ daily_days = 30, instant_restore_days = 2 }}

[[vms]]
name = "web"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "{image}"
""",
        "inv.toml",
    )
    ids = []
    for seed in (11, 12, 13):
        testdisk.mutate_disk(image, 20.0, seed=seed, jobs=1)
        ids.append(run_vm_backup(ctx, inventory, "web")["id"])
    later = datetime.now(UTC) + timedelta(days=40)  # today's points are 40 days old then
    dry = run_prune(ctx, inventory, dry_run=True, now=later)
    assert dry["vms"]["web"]["prune"] == ids[:2]
    assert ctx.open_vault().point_ids() == ids  # a dry run deletes nothing
    done = run_prune(ctx, inventory, now=later)
    assert list(done["vms"]["web"]["keep"]) == [ids[2]]
    assert ctx.open_vault().point_ids() == [ids[2]]
    assert run_gc(ctx, grace=0).bytes_freed > 0
    out = tmp_path / "restored.img"
    run_restore(ctx, ids[2], str(out))
    assert same_content(image, out)
    now_plan = run_prune(ctx, inventory, dry_run=True)  # today: nothing expires
    assert now_plan["vms"]["web"]["prune"] == []


def test_gc_removes_what_interrupted_writes_left_once_older_than_the_grace(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """A writer killed mid-put leaves its temporary file (``check`` warns of it); the
    collection removes it once untouched for the grace period, and leaves a young one,
    whose write may still be under way."""
    ctx = _ctx(tmp_path)
    image = make_image("a.img", size=8 * MiB)
    point = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    folder = next(p for p in (Path(ctx.vault_path) / "packs").iterdir() if p.is_dir())
    stale = folder / f".tmp-{'ab' * 32}.0123456789ab"
    stale.write_bytes(os.urandom(300_000))  # what a killed put leaves: part of a pack
    hour_ago = time.time() - 7200
    os.utime(stale, (hour_ago, hour_ago))
    young = folder / f".tmp-{'cd' * 32}.ba9876543210"
    young.write_bytes(os.urandom(1000))
    warned = {p.object for p in run_check(ctx).problems if p.kind == "leftover_temp"}
    assert {Path(name).name for name in warned} == {stale.name, young.name}
    report = run_gc(ctx)  # the default grace, an hour
    assert [Path(name).name for name in report.leftovers_removed] == [stale.name]
    assert not stale.exists() and young.exists()
    assert run_check(ctx, read_data=True).ok
    out = tmp_path / "restored.img"
    run_restore(ctx, point["id"], str(out))
    assert same_content(image, out)


def test_gc_on_a_read_only_vault_with_a_stale_leftover_is_one_clear_error(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """The leftover cannot go: the collection stops with the read-only vault's own error,
    and nothing of the vault changes."""
    mountpoint = tmp_path / "ro"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mountpoint)], check=True)
    try:
        ctx = Context(str(mountpoint / "vault"), f"sqlite:///{tmp_path / 'c.db'}")
        init_vault(ctx, pack_target=1 * MiB)
        run_backup(ctx, "vm", [DiskSpec("os", str(make_image("a.img", size=4 * MiB)))])
        folder = next(p for p in (Path(ctx.vault_path) / "packs").iterdir() if p.is_dir())
        stale = folder / f".tmp-{'ef' * 32}.0123456789ab"
        stale.write_bytes(b"half a pack")
        os.utime(stale, (time.time() - 7200, time.time() - 7200))
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        with pytest.raises(BackendReadOnly, match="read-only"):
            run_gc(ctx)
        assert stale.exists()
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
