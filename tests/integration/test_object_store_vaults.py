"""Vaults in object stores (SeaweedFS for S3, Azurite for Azure Blob), beyond one backup:
two writers at once, garbage collection deferred by a lock and finished after it, and a
copy in one store restoring a VM when the vault in the other is gone."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from support.azuritekit import AzureVault
from support.cli import PASSPHRASE, run_cli, same_content
from support.s3kit import S3Vault
from support.serverkit import make_site
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point
from vmvault.app.vaults import init_vault, run_check, run_gc
from vmvault.backends.url import open_backend
from vmvault.model.point import RecoveryPoint
from vmvault.server.app import create_app
from vmvault.vault.locks import VaultLock

MiB = testdisk.MiB


@pytest.fixture(params=["s3", "azure"])
def store_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A vault URL in a fresh bucket or container, the store's variables set."""
    monkeypatch.setenv("VMVAULT_PASSPHRASE", PASSPHRASE)
    if request.param == "s3":
        request.applymarker(pytest.mark.s3)
        s3: S3Vault = request.getfixturevalue("s3_vault")
        return s3.url("shared")
    request.applymarker(pytest.mark.azure)
    azure: AzureVault = request.getfixturevalue("azure_vault")
    return azure.url("shared")


def test_two_writers_then_gc_deferred_by_a_lock(store_url: str, tmp_path: Path) -> None:
    ctx = Context(store_url, f"sqlite:///{tmp_path / 'catalog.db'}")
    init_vault(ctx)
    images = []
    for n in range(2):
        image = tmp_path / f"vm{n}.img"
        testdisk.create_disk(image, 12 * MiB, seed=30 + n, jobs=1)
        images.append(image)
    points: dict[int, RecoveryPoint] = {}
    errors: list[BaseException] = []

    def back_up(n: int) -> None:
        try:
            points[n] = run_backup(ctx, f"vm{n}", [DiskSpec("os", str(images[n]))])
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    writers = [threading.Thread(target=back_up, args=(n,)) for n in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not errors, errors
    assert run_check(ctx, read_data=True).ok

    forget_point(ctx, points[0]["id"])
    backend = open_backend(store_url)
    with VaultLock(backend, "backup"):  # a backup in progress elsewhere
        held = run_gc(ctx, grace=0)
    assert held.deferred and held.deleted_packs == 0
    assert backend.exists("gc/pending")  # announced in the store, swept later
    swept = run_gc(ctx, grace=0)
    assert not swept.deferred and swept.deleted_packs > 0
    assert not backend.exists("gc/pending")
    assert run_check(ctx, read_data=True).ok
    out = tmp_path / "vm1-restored.img"
    done = run_cli(
        "restore", "latest", str(out), "--vm", "vm1", "--vault", store_url,
        "--catalog", ctx.catalog_url or "",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert same_content(images[1], out)


@pytest.mark.s3
@pytest.mark.azure
def test_a_copy_in_another_store_restores_the_vm(
    s3_vault: S3Vault, azure_vault: AzureVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMVAULT_PASSPHRASE", PASSPHRASE)
    vault_url, copy_url = s3_vault.url("primary"), azure_vault.url("copy")
    disk = tmp_path / "disks" / "web-os.img"
    disk.parent.mkdir()
    testdisk.create_disk(disk, 12 * MiB, seed=40, jobs=1)
    inventory = tmp_path / "inv.toml"
    inventory.write_text(
        f'[[vms]]\nname = "web"\n[[vms.disks]]\nname = "os"\nrole = "os"\npath = "{disk}"\n'
    )
    common = ("--catalog", f"sqlite:///{tmp_path / 'catalog.db'}")
    init_vault(Context(vault_url, common[1]))  # `vmvault init` on S3: test_s3_backend.py
    backed = run_cli("vm", "backup", "web", "-i", str(inventory), "--vault", vault_url, *common)
    assert backed.returncode == 0, backed.stderr
    sent = run_cli("vault", "replicate", "--to", copy_url, "--vault", vault_url, "--json", *common)
    assert sent.returncode == 0, sent.stderr
    assert len(json.loads(sent.stdout)["copied"]) == 1

    for key in list(open_backend(vault_url).list()):  # the primary store loses the vault
        open_backend(vault_url).delete(key)
    gone = run_cli("list", "--vault", vault_url, *common)
    assert gone.returncode != 0 and len(gone.stderr.splitlines()) == 1

    restored_dir = tmp_path / "restored"
    back = run_cli(
        "vm", "restore", "web", "--as", "web-back", "--to", str(restored_dir),
        "--from", copy_url, "-i", str(inventory), "--json", *common,
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    [restored] = [p for p in restored_dir.rglob("*") if p.is_file() and p.suffix == ".img"]
    assert same_content(disk, restored)
    shutil.rmtree(restored_dir)


def test_the_server_on_an_object_store_vault(store_url: str, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", vault=store_url, backup=False)
    with TestClient(create_app(site.config)) as client:
        info = client.get("/api/v1/vault", headers=site.auth("reader")).json()
        assert info["location"] == store_url and info["points"] == 0
        queued = client.post("/api/v1/vms/db01/backup", json={}, headers=site.auth("operator"))
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/api/v1/jobs/{job_id}", headers=site.auth("reader")).json())[
            "state"
        ] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["state"] == "succeeded", job
        points = client.get("/api/v1/points", headers=site.auth("reader")).json()
        assert points["total"] == 1
