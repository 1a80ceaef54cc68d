"""The catalog: recording a point is idempotent (a rebuild may have copied it already), and a
catalog made before a column existed gets it on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.catalog.store import Catalog


def test_recording_a_point_a_rebuild_already_copied_keeps_one_row(
    ctx: Context, make_image: object
) -> None:
    image = make_image()  # type: ignore[operator]
    point = run_backup(ctx, "vm1", [DiskSpec("os", str(image))])
    vault = ctx.open_vault(load_index=False)
    catalog = ctx.catalog()
    catalog.rebuild(vault.config.vault_id, vault.points())  # e.g. a prune, concurrently
    catalog.record_point(vault.config.vault_id, point)  # the backup's own write, after it
    rows = catalog.points(vault.config.vault_id)
    assert [p.id for p in rows] == [point["id"]] and len(rows[0].disks) == 1


def test_an_old_catalog_gets_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Catalog(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN progress")  # as a catalog made before it
    Catalog(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    assert "progress" in columns
