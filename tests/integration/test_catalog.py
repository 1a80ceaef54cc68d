"""The catalog: recording a point is idempotent (a rebuild may have copied it already), and a
catalog made before a column existed gets it on open; the pages and counts the server asks for."""

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


def test_job_pages_and_the_counts_the_server_shows(tmp_path: Path) -> None:
    from vmvault.alerts.store import raise_alert

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    first = catalog.start_job("A", "backup", "vm1")
    second = catalog.start_job("A", "verify", "vm2")
    third = catalog.start_job("A", "backup", "vm2")
    catalog.start_job("B", "backup", "vm1")  # another vault's: never counted for A
    catalog.finish_job(first, "succeeded")
    total, rows = catalog.job_page("A")
    assert total == 3 and [j.id for j in rows] == [third, second, first]
    total, rows = catalog.job_page("A", offset=1, limit=1)
    assert total == 3 and [j.id for j in rows] == [second]  # newest first
    total, rows = catalog.job_page("A", state="running", vm="vm2")
    assert total == 2 and [j.id for j in rows] == [third, second]
    assert catalog.job_page("A", state="succeeded", vm="vm2") == (0, [])
    counts = sorted(catalog.job_counts("A"))
    assert counts == [
        ("backup", "running", 1),
        ("backup", "succeeded", 1),
        ("verify", "running", 1),
    ]
    raise_alert(catalog, "A", "job_failed", "one")
    raise_alert(catalog, "A", "job_failed", "two")
    raise_alert(catalog, "A", "point_damaged", "three")
    raise_alert(catalog, "B", "job_failed", "elsewhere")
    assert sorted(catalog.alert_counts("A")) == [("job_failed", 2), ("point_damaged", 1)]
