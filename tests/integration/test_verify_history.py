"""Each verify of a point is recorded in the catalog; `list` shows each point's last one;
damage a verify finds is recorded as such and raises the point's alert."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from support.cli import PASSPHRASE, run_cli
from support.damagekit import flip_one_data_chunk
from vmvault import testdisk
from vmvault.alerts.store import list_alerts
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_verify
from vmvault.app.vaults import reindex
from vmvault.catalog.store import Catalog
from vmvault.catalog.verifications import last_verified, record_verify
from vmvault.cli.client import LocalClient
from vmvault.model.verify import VerifyOutcome

MiB = testdisk.MiB


def _list(ctx: Context, *args: str) -> str:
    env = {
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": ctx.catalog_url or "",
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "COLUMNS": "250",  # the table's cells whole
    }
    done = run_cli("list", *args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_verify_outcomes_are_recorded_and_listed(
    ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=4 * MiB)
    point = run_backup(ctx, "web", [DiskSpec("os", str(image))])
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    local = LocalClient(ctx.vault_path, ctx.catalog_url, None)
    listing = local.list_points(None)  # what `list` prints, with --json and without
    assert listing.points[0]["id"] == point["id"]
    assert listing.points[0]["last_verified"] is None
    assert listing.summaries[0]["last_verified"] is None

    run_verify(ctx, "latest")
    ok = last_verified(ctx.catalog(), vault_id)[point["id"]]
    assert (ok.ok, ok.damaged, ok.first_damage, ok.vm) == (True, 0, None, "web")
    assert 0 < ok.bytes_read <= 4 * MiB and ok.seconds > 0
    assert local.list_points("web").points[0]["last_verified"]["at"] == ok.at.isoformat()
    [row] = [
        line for line in _list(ctx).splitlines() if point["id"][:15] in line
    ]  # list shows a unique prefix
    assert f"{ok.at.isoformat()[:16].replace('T', ' ')} ok" in row

    flip_one_data_chunk(ctx)
    _, reports = run_verify(ctx, point["id"][:8])
    assert reports[0].damaged
    bad = last_verified(ctx.catalog(), vault_id)[point["id"]]
    assert bad.id > ok.id and not bad.ok and bad.damaged == 1
    assert bad.first_damage is not None and bad.first_damage.startswith("os bytes ")
    assert "authentication failed" in bad.first_damage
    [alert] = [a for a in list_alerts(ctx.catalog(), vault_id)[1] if a.kind == "point_damaged"]
    assert alert.vm == "web" and alert.details["point"] == point["id"]
    assert "1 damaged range(s)" in alert.message
    [listed] = json.loads(_list(ctx, "--json"))["points"]
    assert listed["last_verified"]["ok"] is False and listed["last_verified"]["damaged"] == 1
    assert listed["last_verified"]["first_damage"] == bad.first_damage

    # Verifies are not in the vault: a catalog rebuilt from it keeps them.
    reindex(ctx)
    assert last_verified(ctx.catalog(), vault_id)[point["id"]].id == bad.id


def test_a_point_whose_object_is_damaged_is_recorded_damaged(
    ctx: Context, make_image: Callable[..., Path]
) -> None:
    from vmvault.errors import DamageFound

    image = make_image(size=2 * MiB)
    point = run_backup(ctx, "web", [DiskSpec("os", str(image))])
    [path] = [p for p in Path(ctx.vault_path).rglob(point["id"]) if p.is_file()]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    try:
        run_verify(ctx, point["id"])
    except DamageFound:
        pass
    else:
        raise AssertionError("a damaged point object verified")
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    row = last_verified(ctx.catalog(), vault_id)[point["id"]]
    assert not row.ok and row.bytes_read == 0 and row.first_damage


def test_an_old_catalog_gets_the_verify_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Catalog(f"sqlite:///{path}").engine.dispose()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE point_verifications")  # as a catalog made before it
    catalog = Catalog(f"sqlite:///{path}")
    record_verify(catalog, "v", VerifyOutcome("p1", "web", 0, None, 10, 0.5))
    record_verify(catalog, "v", VerifyOutcome("p1", "web", 2, "os bytes 0-1: x", 10, 0.5))
    record_verify(catalog, "other", VerifyOutcome("p2", "db", 0, None, 10, 0.5))
    newest = last_verified(catalog, "v")
    assert list(newest) == ["p1"] and newest["p1"].damaged == 2
