"""Incremental backups send roughly the changed bytes; dedup works across disks and VMs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from support.cli import same_content
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore

MiB = testdisk.MiB


def vault_bytes(ctx: Context) -> int:
    return sum(f.stat().st_size for f in Path(ctx.vault_path).rglob("*") if f.is_file())


def test_incremental_sends_about_the_changed_bytes(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=64 * MiB)
    first = run_backup(ctx, "web", [DiskSpec("os", str(image))])
    before = vault_bytes(ctx)
    original = tmp_path / "orig.img"
    os.system(f"cp --sparse=always {image} {original}")
    mutation = testdisk.mutate_disk(image, 2.0, seed=7, jobs=1)
    second = run_backup(ctx, "web", [DiskSpec("os", str(image))])
    stats = second["disks"][0]["stats"]
    assert second["type"] == "incremental" and second["parent"] == first["id"]
    # only the rewritten 64 KiB chunks are new: never more than what was written
    assert stats["new"] <= mutation.bytes_written
    assert stats["unchanged"] > 0
    growth = vault_bytes(ctx) - before
    # compressed + encrypted chunks, plus one 2 KiB record per touched 4 MiB block
    assert growth <= 1.5 * mutation.bytes_written + 64 * 1024, (growth, mutation.bytes_written)
    for point, reference in ((first, original), (second, image)):
        out = tmp_path / f"r-{point['id']}.img"
        run_restore(ctx, point["id"], str(out))
        assert same_content(reference, out)


def test_unchanged_disk_costs_almost_nothing(ctx: Context, make_image: Callable[..., Path]) -> None:
    image = make_image(size=32 * MiB)
    run_backup(ctx, "web", [DiskSpec("os", str(image))])
    before = vault_bytes(ctx)
    again = run_backup(ctx, "web", [DiskSpec("os", str(image))])
    stats = again["disks"][0]["stats"]
    assert stats["new"] == 0 and stats["records_new"] == 0
    assert vault_bytes(ctx) - before < 16 * 1024  # one manifest and one point object


def test_full_flag_still_deduplicates(ctx: Context, make_image: Callable[..., Path]) -> None:
    image = make_image(size=16 * MiB)
    run_backup(ctx, "web", [DiskSpec("os", str(image))])
    again = run_backup(ctx, "web", [DiskSpec("os", str(image))], full=True)
    stats = again["disks"][0]["stats"]
    assert again["type"] == "full" and stats["unchanged"] == 0
    assert stats["new"] == 0 and stats["deduplicated"] > 0


def test_dedup_across_disks_and_vms(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=32 * MiB)
    clone = tmp_path / "clone.img"
    os.system(f"cp --sparse=always {image} {clone}")
    first = run_backup(ctx, "web1", [DiskSpec("os", str(image))])
    before = vault_bytes(ctx)
    other = run_backup(ctx, "web2", [DiskSpec("os", str(clone))])
    stats = other["disks"][0]["stats"]
    assert other["type"] == "full"
    assert stats["new"] == 0
    assert stats["deduplicated"] == first["disks"][0]["stats"]["new"]
    assert vault_bytes(ctx) - before < 64 * 1024
    out = tmp_path / "r.img"
    run_restore(ctx, other["id"], str(out))
    assert same_content(clone, out)


def test_change_hint_reads_only_the_changed_chunks(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    """With a dirty-bitmap style hint, only the named ranges are read; the result is the
    same point a read-and-hash incremental gives."""
    from vmvault.disks.source import RawDisk
    from vmvault.engine.backup import DiskInput, backup
    from vmvault.engine.ranges import merge_ranges

    image = make_image(size=32 * MiB)
    run_backup(ctx, "web", [DiskSpec("os", str(image))])
    writes = [
        (5 * MiB + 4096, b"\x11" * 100),
        (20 * MiB, os.urandom(64 * 1024)),
        (31 * MiB, bytes(64 * 1024)),
    ]
    with open(image, "r+b") as f:
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
    vault = ctx.open_vault()
    hint = [(offset, offset + len(data)) for offset, data in writes]
    with RawDisk.open(image) as disk:
        hinted = backup(vault, "web", [DiskInput("os", disk, changed=hint)])
    stats = hinted.stats["os"]
    assert stats.read <= 3 * 64 * 1024
    assert stats.skipped >= 31 * MiB
    with RawDisk.open(image) as disk:
        hashed = backup(vault, "web", [DiskInput("os", disk)])
    assert hinted.point["disks"][0]["manifest"] == hashed.point["disks"][0]["manifest"]
    out = tmp_path / "hinted.img"
    run_restore(ctx, hinted.point["id"], str(out))
    assert out.read_bytes() == image.read_bytes()
    assert merge_ranges([(5, 9), (0, 2), (8, 12), (3, 3)]) == [(0, 2), (5, 12)]


def test_changes_only_source_needs_a_readable_parent(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    """An image holding only the changes must never be read as a whole disk."""
    import pytest

    from vmvault.disks.source import RawDisk
    from vmvault.engine.backup import DiskInput, backup
    from vmvault.errors import CorruptObject, UsageError
    from vmvault.vault.format import KIND_RECORD

    image = make_image(size=16 * MiB)
    vault = ctx.open_vault()
    with RawDisk.open(image) as disk, pytest.raises(UsageError, match="no parent"):
        backup(vault, "web", [DiskInput("os", disk, changed=[], changes_only=True)])
    run_backup(ctx, "web", [DiskSpec("os", str(image))])
    vault = ctx.open_vault()
    loc = next(loc for _, loc in vault.index.items() if loc.kind == KIND_RECORD)
    pack = Path(ctx.vault_path) / "packs" / loc.pack_id.hex()[:2] / loc.pack_id.hex()
    data = bytearray(pack.read_bytes())
    data[loc.offset + 20] ^= 1  # damage one block record of the parent
    pack.write_bytes(bytes(data))
    with RawDisk.open(image) as disk, pytest.raises(CorruptObject, match="unreadable"):
        backup(vault, "web", [DiskInput("os", disk, changed=[(0, 4096)], changes_only=True)])
    with RawDisk.open(image) as disk:  # a plain hint falls back to reading that block
        result = backup(vault, "web", [DiskInput("os", disk, changed=[(0, 4096)])])
    assert result.stats["os"].read > 0
