"""Immutability enforced by the store too, against the real servers: S3 Object Lock on
SeaweedFS (what it really does with a locked vault's objects, raw deletes included), a
bucket without Object Lock, and Azurite (which implements no immutability at all)."""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError

from support.azuritekit import AzureVault
from support.cli import PASSPHRASE, run_cli, same_content
from support.s3kit import S3Vault
from vmvault import protection, testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point
from vmvault.app.protection import set_immutability
from vmvault.app.restore import run_restore
from vmvault.app.retention import run_prune
from vmvault.app.vaults import init_vault, run_check, run_gc
from vmvault.app.vm_backup import run_vm_backup
from vmvault.backends.base import RETENTION_MARGIN, Backend, ObjectRetained, retaining
from vmvault.backends.local import LocalBackend
from vmvault.backends.retry import RetryingBackend
from vmvault.inventory import parse_inventory
from vmvault.policy import ImmutableVaultError, StoreRetentionUnavailable
from vmvault.vault import store_retention

MiB = testdisk.MiB


def _lock_bucket(s3_vault: S3Vault) -> str:
    """A second bucket on the same server, created with Object Lock (and so versioning)."""
    bucket = f"vmvault-lock-{secrets.token_hex(5)}"
    s3_vault.client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


def _ctx(url: str, tmp_path: Path) -> Context:
    return Context(url, f"sqlite:///{tmp_path / 'catalog.db'}")


def _head(client: Any, bucket: str, key: str) -> dict[str, Any]:
    head: dict[str, Any] = client.head_object(Bucket=bucket, Key=key)
    return head


def _versions(client: Any, bucket: str, key: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The object versions and delete markers of exactly ``key``."""
    answer = client.list_object_versions(Bucket=bucket, Prefix=key)
    versions = [v for v in answer.get("Versions", []) if v["Key"] == key]
    markers = [m for m in answer.get("DeleteMarkers", []) if m["Key"] == key]
    return versions, markers


def _near(when: datetime, expected: datetime) -> bool:
    return abs((when - expected).total_seconds()) < 120


@pytest.mark.s3
def test_what_s3_stores_can_do(s3_vault: S3Vault, tmp_path: Path) -> None:
    locked = Context(f"s3://{_lock_bucket(s3_vault)}/v", "sqlite://")
    plain = Context(s3_vault.url("v"), "sqlite://")
    yes = retaining(locked.backend())
    no = retaining(plain.backend())
    assert yes is not None and no is not None  # the S3 backend has the capability...
    assert yes.retention_support().available  # ...and a bucket with Object Lock, the feature
    support = no.retention_support()
    assert not support.available and support.feature == "S3 Object Lock"
    assert "has no Object Lock" in support.detail and s3_vault.bucket in support.detail
    directory = Context(str(tmp_path / "dir"), "sqlite://")
    assert retaining(directory.backend()) is None  # a directory cannot be asked at all
    # A bucket's own default retention covers every object, locks included: said.
    assert yes.retention_support().note == ""
    bucket = locked.vault_path.removeprefix("s3://").split("/")[0]
    s3_vault.client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2}},
        },
    )
    note = yes.retention_support().note
    assert "default retention (GOVERNANCE, 2 days)" in note and "each lock" in note


@pytest.mark.s3
def test_a_locked_vault_on_an_object_lock_bucket(s3_vault: S3Vault, tmp_path: Path) -> None:
    client = s3_vault.client
    bucket = _lock_bucket(s3_vault)
    ctx = _ctx(f"s3://{bucket}/site", tmp_path)
    init_vault(ctx)
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 8 * MiB, seed=5, jobs=1)
    first = run_backup(ctx, "vm1", [DiskSpec("d0", str(image))])

    # Locking the vault asks the store too, and retains what is already there at once.
    before = datetime.now(UTC)
    doc = set_immutability(ctx, "locked", store_days=2, retain_existing=True)
    store = doc["store"]
    assert store["enforced"] and store["mode"] == "compliance" and store["days"] == 2
    assert store["feature"] == "S3 Object Lock"
    assert store["retained_now"]["problem"] is None
    assert store["retained_now"]["extended"] == store["retained_now"]["checked"] > 5
    expected = before + timedelta(days=2) + RETENTION_MARGIN
    first_key = f"site/points/{first['id']}"
    head = _head(client, bucket, first_key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert _near(head["ObjectLockRetainUntilDate"], expected)

    # What is written from now on carries its retention from the first byte.
    testdisk.mutate_disk(image, 4, jobs=1)
    second = run_backup(ctx, "vm1", [DiskSpec("d0", str(image))])
    second_key = f"site/points/{second['id']}"
    written = client.list_objects_v2(Bucket=bucket, Prefix="site/")["Contents"]
    keys = [o["Key"] for o in written]
    retained = [k for k in keys if k.split("/")[1] in ("packs", "index", "manifests", "points")]
    assert len(retained) > 4
    for key in [*retained, "site/config", "site/keys/default"]:
        head = _head(client, bucket, key)
        assert head.get("ObjectLockMode") == "COMPLIANCE", key
        assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=2), key
    # The objects rewritten in place are not: each rewrite would leave a retained version.
    assert "ObjectLockMode" not in _head(client, bucket, "site/settings")

    # Someone with the bucket's credentials deletes a point and a pack behind vmvault's
    # back: S3 only adds delete markers (versioning), and the versions themselves cannot go.
    pack_key = next(k for k in retained if "/packs/" in k)
    sealed_point = client.get_object(Bucket=bucket, Key=second_key)["Body"].read()
    for key in (second_key, pack_key):
        answer = client.delete_object(Bucket=bucket, Key=key)
        assert answer["DeleteMarker"] is True
        versions, markers = _versions(client, bucket, key)
        assert len(versions) == 1 and len(markers) == 1
        with pytest.raises(ClientError) as refused:
            client.delete_object(Bucket=bucket, Key=key, VersionId=versions[0]["VersionId"])
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # The locked version is still there, byte for byte, by its version id.
    versions, markers = _versions(client, bucket, second_key)
    kept = client.get_object(Bucket=bucket, Key=second_key, VersionId=versions[0]["VersionId"])
    assert kept["Body"].read() == sealed_point
    # vmvault sees what the store shows: the point is hidden, its pack missing.
    assert second["id"] not in {p["id"] for p in ctx.open_vault(load_index=False).points()}
    assert not run_check(ctx).ok
    # Removing the delete markers (the recovery) brings both back, whole.
    for key in (second_key, pack_key):
        _, markers = _versions(client, bucket, key)
        client.delete_object(Bucket=bucket, Key=key, VersionId=markers[0]["VersionId"])
    assert second["id"] in {p["id"] for p in ctx.open_vault(load_index=False).points()}
    assert run_check(ctx, read_data=True).ok
    restored = tmp_path / "restored.img"
    run_restore(ctx, second["id"], str(restored))
    assert same_content(image, restored)

    # vmvault's own rules still hold first: a locked vault forgets nothing early.
    with pytest.raises(ImmutableVaultError):
        forget_point(ctx, first["id"])
    # ...and the store's retention cannot be shortened while the vault is immutable.
    with pytest.raises(ImmutableVaultError, match="cannot be shortened"):
        set_immutability(ctx, "locked", store_days=1)


def _inventory(tmp_path: Path) -> Any:
    text = f"""
[policies.nightly]
schedule = {{ kind = "daily", time = "22:30" }}
retention = {{ daily_days = 7 }}
[[vms]]
name = "web"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "{tmp_path / "web.img"}"
"""
    return parse_inventory(text, "inv.toml")


@pytest.mark.s3
def test_prune_and_gc_on_retained_objects(s3_vault: S3Vault, tmp_path: Path) -> None:
    """Retention still applies in a locked vault: prune deletes the points it no longer
    keeps and gc their data; on an Object Lock bucket those deletes only hide the retained
    versions, so both finish cleanly and the store still holds every byte until its date."""
    client = s3_vault.client
    bucket = _lock_bucket(s3_vault)
    ctx = _ctx(f"s3://{bucket}/v", tmp_path)
    init_vault(ctx)
    set_immutability(ctx, "locked", store_days=1)
    disk = tmp_path / "web.img"
    with open(disk, "wb") as f:
        f.truncate(4 * MiB)
        f.write(os.urandom(MiB))
    inventory = _inventory(tmp_path)
    old = run_vm_backup(ctx, inventory, "web")["id"]
    with open(disk, "r+b") as f:
        f.write(os.urandom(MiB))  # the old point's unique data becomes garbage once pruned
    new = run_vm_backup(ctx, inventory, "web")["id"]

    pruned = run_prune(ctx, inventory, now=datetime.now(UTC) + timedelta(days=30))
    assert pruned["vms"]["web"]["prune"] == [old] and pruned["vms"]["web"]["retained"] == []
    versions, markers = _versions(client, bucket, f"v/points/{old}")
    assert len(versions) == 1 and len(markers) == 1  # hidden, not gone

    packs_before = {
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="v/packs/")["Contents"]
    }
    report = run_gc(ctx, grace=0, repack_threshold=0.01)
    assert report.retained == [] and not report.problems and not report.damaged
    assert report.deleted_packs + report.repacked_packs >= 1
    assert report.store_retention is not None and report.store_retention["problem"] is None
    packs_after = {
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="v/packs/")["Contents"]
    }
    gone = packs_before - packs_after
    assert gone
    for key in gone:  # every collected pack is still in the store, retained, readable
        versions, markers = _versions(client, bucket, key)
        assert len(versions) == 1 and len(markers) == 1
        held = client.head_object(Bucket=bucket, Key=key, VersionId=versions[0]["VersionId"])
        assert held["ObjectLockMode"] == "COMPLIANCE"
    assert run_check(ctx, read_data=True).ok
    restored = tmp_path / "restored.img"
    run_restore(ctx, new, str(restored))
    assert same_content(disk, restored)


@pytest.mark.s3
def test_maintenance_extends_what_the_vault_still_needs(s3_vault: S3Vault, tmp_path: Path) -> None:
    client = s3_vault.client
    bucket = _lock_bucket(s3_vault)
    ctx = _ctx(f"s3://{bucket}/v", tmp_path)
    init_vault(ctx)
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 4 * MiB, seed=2, jobs=1)
    # "on" asks for the store's relaxed mode: GOVERNANCE.
    on = set_immutability(ctx, "on", store_days=3)  # the API's way: existing ones later
    assert on["store"]["mode"] == "governance" and on["store"]["retained_now"] is None
    point = run_backup(ctx, "vm1", [DiskSpec("d0", str(image))])
    key = f"v/points/{point['id']}"
    assert _head(client, bucket, key)["ObjectLockMode"] == "GOVERNANCE"

    vault = ctx.open_vault(load_index=False)
    rule = vault.store_retention
    assert rule is not None
    first = store_retention.refresh(vault, rule)  # the objects init wrote: config, keys
    assert first is not None and first.extended == 2 and first.checked > 3
    nothing = store_retention.refresh(vault, rule)  # all just retained: nothing to extend
    assert nothing is not None and nothing.extended == 0 and nothing.checked == first.checked

    # Ten days on (as the next maintenance would see it): every object is extended, each
    # in the mode it has while that lasts (stores refuse to switch it).
    set_immutability(ctx, "locked")  # keeps its 3 days
    vault = ctx.open_vault(load_index=False)
    assert vault.store_retention is not None and vault.store_retention.mode == "compliance"
    later = datetime.now(UTC) + timedelta(days=10)
    done = store_retention.refresh(vault, vault.store_retention, now=later)
    assert done is not None and done.problem is None and done.extended == done.checked
    head = _head(client, bucket, key)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert _near(head["ObjectLockRetainUntilDate"], later + timedelta(days=3) + RETENTION_MARGIN)
    again = store_retention.refresh(vault, vault.store_retention, now=later)
    assert again is not None and again.extended == 0  # once a week, not every day


@pytest.mark.s3
def test_cli_says_who_enforces_it(s3_vault: S3Vault, tmp_path: Path) -> None:
    env = {
        **s3_vault.server.env(),
        "VMVAULT_CATALOG": f"sqlite:///{tmp_path / 'cat.db'}",
        "VMVAULT_PASSPHRASE": PASSPHRASE,
    }
    plain = s3_vault.url("plain")
    # The vaults are made in-process (`vmvault init` of an S3 vault has its own test in
    # test_s3_backend.py); what is asked of the CLI here is its immutability command.
    init_vault(Context(plain, env["VMVAULT_CATALOG"]))
    # Asking the store where it cannot is refused, before anything changes.
    asked = run_cli(
        "vault", "immutability", "locked", "--store-days", "5", "--vault", plain, env=env
    )
    assert asked.returncode == 2, asked.stderr
    assert "the store cannot enforce immutability" in asked.stderr
    assert "has no Object Lock" in asked.stderr and len(asked.stderr.splitlines()) == 1
    shown = run_cli("vault", "immutability", "on", "--vault", plain, "--json", env=env)
    assert json.loads(shown.stdout)["immutability"] == "on"  # the refusal changed nothing before
    # Without --store-days: vmvault's immutability, said plainly to be vmvault's only.
    said = run_cli("vault", "immutability", "locked", "--vault", plain, env=env)
    assert said.returncode == 0, said.stderr
    assert said.stdout.splitlines() == [
        "immutability: locked",
        f"enforced by vmvault only: bucket {s3_vault.bucket!r} has no Object Lock (it is"
        " enabled when a bucket is created, or on a versioned bucket where the store allows it)",
    ]

    locked = f"s3://{_lock_bucket(s3_vault)}/v"
    init_vault(Context(locked, env["VMVAULT_CATALOG"]))
    out = run_cli("vault", "immutability", "locked", "--vault", locked, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "immutability: locked"
    assert lines[1] == (
        "the store enforces it too: S3 Object Lock, COMPLIANCE mode; every object the vault"
        " needs is retained 30 days past the last maintenance"
    )
    assert lines[2].startswith("objects already there: 2 checked, 2 retained now")
    doc = json.loads(
        run_cli("vault", "immutability", "locked", "--vault", locked, "--json", env=env).stdout
    )
    assert doc["store_retention_days"] == 30 and doc["store"]["enforced"] is True


@pytest.mark.s3
def test_a_copy_inherits_the_ask_but_not_the_lock(s3_vault: S3Vault, tmp_path: Path) -> None:
    """Settings that ask for store retention, in a bucket without Object Lock (a copy made
    by replication inherits its vault's settings): the vault opens and works, protected by
    vmvault only; nothing is sent that the store would refuse."""
    ctx = _ctx(s3_vault.url("v"), tmp_path)
    vault = init_vault(ctx)
    doc = protection.settings(vault)
    doc.update(immutability="locked", store_retention_days=5)
    protection.save_settings(vault, doc)
    opened = ctx.open_vault(load_index=False)
    assert opened.store_retention is None
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 4 * MiB, seed=9, jobs=1)
    run_backup(ctx, "vm1", [DiskSpec("d0", str(image))])
    assert run_check(ctx).ok


@pytest.mark.azure
def test_azurite_has_no_immutability(azure_vault: AzureVault, tmp_path: Path) -> None:
    """Azurite answers 501 to the immutability policy and legal hold calls and ignores the
    policy headers of an upload; no container of it reports version-level immutability, so
    vmvault says the vault is protected by vmvault only and never sends a policy."""
    ctx = _ctx(azure_vault.url("v"), tmp_path)
    init_vault(ctx)
    capability = retaining(ctx.backend())
    assert capability is not None  # the Azure backend can ask...
    support = capability.retention_support()
    assert not support.available  # ...but this container cannot retain anything
    assert support.feature == "Azure version-level immutability"
    assert "has no version-level immutability" in support.detail
    with pytest.raises(StoreRetentionUnavailable, match="has no version-level immutability"):
        set_immutability(ctx, "locked", store_days=3)
    assert protection.settings(ctx.open_vault(load_index=False))["immutability"] == "off"
    doc = set_immutability(ctx, "locked", retain_existing=True)
    assert doc["immutability"] == "locked" and "store_retention_days" not in doc
    assert doc["store"]["enforced"] is False and doc["store"]["retained_now"] is None
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 4 * MiB, seed=6, jobs=1)
    point = run_backup(ctx, "vm1", [DiskSpec("d0", str(image))])
    blob = azure_vault.client.get_blob_client(f"v/points/{point['id']}").get_blob_properties()
    assert blob.immutability_policy.expiry_time is None and not blob.has_legal_hold
    report = run_gc(ctx, grace=0)
    assert report.store_retention is None


class _Refusing:
    """A store that refuses to delete what it retains, as a WORM store without versions or
    an Azure container-level policy does (S3 Object Lock and Azure's version-level
    immutability never refuse a plain delete, so neither server here can show this)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.refusing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def delete(self, key: str) -> None:
        if self.refusing and key.split("/", 1)[0] in ("packs", "index", "manifests", "points"):
            raise ObjectRetained(f"the store retains {key}")
        self.inner.delete(key)


def test_gc_and_prune_leave_what_the_store_refuses_to_delete(tmp_path: Path) -> None:
    store: dict[str, _Refusing] = {}

    def backend(path: str) -> Backend:
        store.setdefault(path, _Refusing(LocalBackend(path)))
        return RetryingBackend(cast("Backend", store[path]))

    ctx = Context(
        str(tmp_path / "vault"), f"sqlite:///{tmp_path / 'c.db'}", backend_factory=backend
    )
    init_vault(ctx)
    refusing = store[str(tmp_path / "vault")]
    disk = tmp_path / "web.img"
    with open(disk, "wb") as f:
        f.truncate(4 * MiB)
        f.write(os.urandom(MiB))
    inventory = _inventory(tmp_path)
    old = run_vm_backup(ctx, inventory, "web")["id"]
    with open(disk, "r+b") as f:
        f.write(os.urandom(MiB))
    new = run_vm_backup(ctx, inventory, "web")["id"]
    vault_id = ctx.open_vault(load_index=False).config.vault_id

    # Prune: the point stays a point (and keeps its catalog row), named; nothing fails.
    later = datetime.now(UTC) + timedelta(days=30)
    pruned = run_prune(ctx, inventory, now=later)["vms"]["web"]
    assert pruned["prune"] == [] and pruned["retained"] == [old]
    assert {p.id for p in ctx.catalog().points(vault_id)} == {old, new}
    # Forgetting it says why, and the catalog still lists it.
    with pytest.raises(ObjectRetained, match="retains points/"):
        forget_point(ctx, old)
    assert {p.id for p in ctx.catalog().points(vault_id)} == {old, new}

    refusing.refusing = False  # its date has passed
    assert run_prune(ctx, inventory, now=later)["vms"]["web"]["prune"] == [old]

    # GC: the packs and index objects the store keeps are named and left; nothing is lost,
    # and no index object names a pack that is gone.
    refusing.refusing = True
    report = run_gc(ctx, grace=0, repack_threshold=0.01)
    assert report.retained and report.deleted_packs == report.repacked_packs == 0
    assert report.bytes_freed == 0 and not report.problems
    assert run_check(ctx, read_data=True).ok
    restored = tmp_path / "restored.img"
    run_restore(ctx, new, str(restored))
    assert same_content(disk, restored)

    refusing.refusing = False  # and once the store lets them go, the next run frees them
    report = run_gc(ctx, grace=0, repack_threshold=0.01)
    assert not report.retained and report.deleted_packs + report.repacked_packs >= 1
    assert report.bytes_freed > 0
    assert run_gc(ctx, grace=0, repack_threshold=0.01).candidates == 0
    assert run_check(ctx, read_data=True).ok
    restored.unlink()
    run_restore(ctx, new, str(restored))
    assert same_content(disk, restored)
