"""Corruption is detected, named and reported; one bad chunk never costs the whole disk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli
from support.damagekit import flip_one_data_chunk
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore
from vmvault.app.vaults import reindex, run_check
from vmvault.engine.restore import merge_damage
from vmvault.errors import RestoreDamaged

MiB = testdisk.MiB


def test_flipped_byte_detected_by_verify_restore_and_check(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=16 * MiB)
    run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    flip_one_data_chunk(ctx)

    env = {
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": ctx.catalog_url or "",
        "VMVAULT_PASSPHRASE": PASSPHRASE,
    }
    verify = run_cli("verify", "latest", "--json", env=env)
    assert verify.returncode == 3
    doc = json.loads(verify.stdout)
    assert doc["ok"] is False
    [damage] = doc["disks"][0]["damaged"]
    # the damaged blob holds a run of chunks of one block: at most that block is lost
    assert 0 < damage["end"] - damage["start"] <= 4 * MiB
    assert damage["start"] % (64 * 1024) == 0
    assert "authentication failed" in damage["reason"]

    check = run_cli("check", "--read-data", "--json", env=env)
    assert check.returncode == 3
    kinds = {p["kind"] for p in json.loads(check.stdout)["problems"]}
    assert {"chunk_damaged", "pack_checksum"} <= kinds

    target = tmp_path / "out.img"
    with pytest.raises(RestoreDamaged) as failed:
        run_restore(ctx, "latest", str(target))
    assert failed.value.ranges == [(damage["start"], damage["end"])]

    report = run_restore(ctx, "latest", str(target), ignore_errors=True)
    assert [(d.start, d.end) for d in merge_damage(report.damaged)] == [
        (damage["start"], damage["end"])
    ]
    # everything outside the damaged range is restored exactly
    original, restored = image.read_bytes(), target.read_bytes()
    s, e = damage["start"], damage["end"]
    assert original[:s] == restored[:s] and original[e:] == restored[e:]
    restore_cli = run_cli("restore", "latest", str(tmp_path / "o2.img"), env=env)
    assert restore_cli.returncode == 3 and "--ignore-errors" in restore_cli.stderr  # damage


def test_missing_pack_is_reported(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=16 * MiB)
    run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    packs = sorted((Path(ctx.vault_path) / "packs").rglob("*"))
    victim = max((p for p in packs if p.is_file()), key=lambda p: p.stat().st_size)
    victim.unlink()
    report = run_check(ctx)
    assert not report.ok
    assert "pack_missing" in {p.kind for p in report.problems}
    with pytest.raises(RestoreDamaged):
        run_restore(ctx, "latest", str(tmp_path / "o.img"))


def test_reindex_rebuilds_lost_index_and_catalog(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=16 * MiB)
    point = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    for index_object in (Path(ctx.vault_path) / "index").iterdir():
        index_object.unlink()
    Path(str(ctx.catalog_url).removeprefix("sqlite:///")).unlink()
    result = reindex(ctx)
    assert result["points"] == 1 and result["packs"] >= 1 and not result["unreadable_packs"]
    assert run_check(ctx, read_data=True).ok
    out = tmp_path / "o.img"
    run_restore(ctx, point["id"], str(out))
    assert out.read_bytes() == image.read_bytes()
    rows = ctx.catalog().points(ctx.open_vault(load_index=False).config.vault_id)
    assert [r.id for r in rows] == [point["id"]]
