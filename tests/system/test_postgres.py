"""The catalog on PostgreSQL (a real server started for these tests): points, jobs, the
queue's claims under concurrency, alert de-duplication, columns and tables added to an old
catalog, verifies per point, and the API's job flow."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from support import pgkit
from support.serverkit import make_site
from vmvault.alerts.store import raise_alert
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.vaults import init_vault, reindex
from vmvault.catalog.claims import claim_daily, claimed_by
from vmvault.catalog.store import Catalog
from vmvault.jobs.queue import JobQueue
from vmvault.server.app import create_app

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with pgkit.postgres_server() as url:  # make sysdeps installs PostgreSQL
        yield url


def _database(pg_url: str, name: str) -> str:
    """A new, empty database on the server."""
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return pg_url.rsplit("/", 1)[0] + f"/{name}"


def test_backups_points_and_jobs(tmp_path: Path, pg_url: str, make_image: object) -> None:
    ctx = Context(str(tmp_path / "vault"), _database(pg_url, "points"))
    init_vault(ctx)
    image = make_image()  # type: ignore[operator]
    first = run_backup(ctx, "vm1", [DiskSpec("os", str(image))])
    second = run_backup(ctx, "vm1", [DiskSpec("os", str(image))])
    catalog = Catalog(ctx.catalog_url)
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    points = catalog.points(vault_id, "vm1")
    assert [p.id for p in points] == [first["id"], second["id"]]
    assert points[1].parent_id == first["id"] and points[0].disks[0].read > 0
    assert [j.state for j in catalog.jobs(vault_id)] == ["succeeded", "succeeded"]
    assert reindex(ctx)["points"] == 2
    catalog.record_point(vault_id, second)  # again: still one row
    assert len(catalog.points(vault_id, "vm1")) == 2


def test_each_job_is_claimed_once_by_concurrent_workers(pg_url: str) -> None:
    queue = JobQueue(Catalog(_database(pg_url, "queue")), "vault-1")
    ids = {queue.enqueue("backup", f"vm{i}") for i in range(40)}
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := queue.claim(name, lambda running, candidate: None)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job once, none twice


def test_a_days_maintenance_is_claimed_once_by_concurrent_schedulers(pg_url: str) -> None:
    url = _database(pg_url, "claims")
    Catalog(url).engine.dispose()  # the tables, made once
    day = date(2026, 11, 20)
    won: list[str] = []
    start = threading.Barrier(4, timeout=30)

    def scheduler(name: str) -> None:
        catalog = Catalog(url)  # each its own connections, as separate processes would
        start.wait()  # then all four at once
        if claim_daily(catalog, "vault-1", "maintenance", day, name):
            won.append(name)
        catalog.engine.dispose()

    threads = [threading.Thread(target=scheduler, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert claimed_by(Catalog(url), "vault-1", "maintenance", day) == won[0]


def test_alerts_are_raised_once_per_key(pg_url: str) -> None:
    catalog = Catalog(_database(pg_url, "alerts"))
    key = "purge_upcoming:v:vm1:2026-12-01"
    first = raise_alert(catalog, "v", "purge_upcoming", "soon", vm="vm1", dedupe_key=key)
    again = raise_alert(catalog, "v", "purge_upcoming", "soon", vm="vm1", dedupe_key=key)
    assert first is not None and again is None
    assert raise_alert(catalog, "v", "job_failed", "boom") is not None  # the session is fine


def test_an_old_catalog_gets_new_columns(pg_url: str) -> None:
    url = _database(pg_url, "old")
    Catalog(url).engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs DROP COLUMN progress"))
    Catalog(url).engine.dispose()
    with engine.connect() as conn:
        columns = conn.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'")
        ).scalars()
        assert "progress" in set(columns)
    engine.dispose()


def test_an_old_catalog_gets_the_verify_table_and_each_points_last_verify(pg_url: str) -> None:
    from vmvault.catalog.verifications import last_verified, record_verify
    from vmvault.model.verify import VerifyOutcome

    url = _database(pg_url, "verifies")
    Catalog(url).engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE point_verifications"))  # as a catalog made before it
    engine.dispose()
    catalog = Catalog(url)
    record_verify(catalog, "v", VerifyOutcome("p1", "web", 0, None, 10, 0.5))
    record_verify(catalog, "v", VerifyOutcome("p1", "web", 2, "os bytes 0-1: x", 10, 0.5))
    record_verify(catalog, "v", VerifyOutcome("p2", "web", 0, None, 3 << 40, 0.5))
    record_verify(catalog, "other", VerifyOutcome("p3", "db", 0, None, 10, 0.5))
    newest = last_verified(catalog, "v")
    assert sorted(newest) == ["p1", "p2"] and newest["p1"].damaged == 2
    assert newest["p2"].ok and newest["p2"].bytes_read == 3 << 40  # BigInteger
    catalog.forget_points("v", ["p1"])
    assert sorted(last_verified(catalog, "v")) == ["p2"]
    catalog.engine.dispose()


def test_api_backup_job_on_a_postgres_catalog(tmp_path: Path, pg_url: str) -> None:
    site = make_site(tmp_path / "site", catalog_url=_database(pg_url, "server"))
    with TestClient(create_app(site.config)) as client:
        queued = client.post("/api/v1/vms/db01/backup", headers=site.auth("operator"), json={})
        assert queued.status_code == 202
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = client.get(f"/api/v1/jobs/{queued.json()['id']}", headers=site.auth("reader"))
            if job.json()["state"] not in ("queued", "running"):
                break
            time.sleep(0.2)
        assert job.json()["state"] == "succeeded" and job.json()["percent"] == 100.0
        audit = client.get("/api/v1/audit", headers=site.auth("admin")).json()["items"]
        assert audit[0]["action"] == "POST /api/v1/vms/db01/backup" and audit[0]["status"] == 202
