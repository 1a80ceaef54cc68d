"""The local cache in front of an S3 vault (backends/cache.py) against a real S3 server
(SeaweedFS, tests/support/s3kit.py): what a backup costs in requests with it, and that no
copy, damaged, stale or another vault's, ever changes what is backed up or restored.

Each "client start" is a new Context, as each CLI command is; its ``requests`` counter
holds every request its backends made (backends/metering.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import blake3
import pytest

from support.cli import run_cli, same_content
from support.s3kit import S3Vault
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore
from vmvault.app.vaults import init_vault, local_cache, run_check
from vmvault.backends.cache import CACHE_LIMIT_ENV, HEADER, cache_root
from vmvault.backends.cache_files import CHUNK_INDEX_DIR
from vmvault.backends.url import open_backend
from vmvault.model.point import RecoveryPoint
from vmvault.vault.format import ZERO_ID

pytestmark = pytest.mark.s3
MiB = testdisk.MiB
DISK = 16 * MiB  # 4 blocks of 4 MiB, 256 chunks of 64 KiB

# What an incremental of a disk image must ask the store, with a warm cache: nothing else.
#   get config (which vault: so which copies)        1
#   put its lock, delete it at the end               2
#   list keys/, index/, packs/, damaged/, points/    5
#   get gc/pending (absent: a 404), at the index's
#   load and again before adopting orphans           2
#   get settings (what the store must retain)        1
#   size of the manifest it commits (stored?)        1
#   create the point                                 1
# = 13 for an unchanged disk (its manifest is the parent's: not written again). A changed
# disk adds its data pack, its record pack, one index object and its manifest: 17.
UNCHANGED_BOUND = 13
CHANGED_BOUND = 17


def _ctx(s3_vault: S3Vault, tmp_path: Path) -> Context:
    return Context(s3_vault.url(), f"sqlite:///{tmp_path / 'catalog.db'}")


def _backup(ctx: Context, image: Path) -> RecoveryPoint:
    return run_backup(ctx, "vm1", [DiskSpec("d0", str(image))], workers=2)


def _restored(ctx: Context, point: RecoveryPoint, tmp_path: Path, image: Path) -> bool:
    target = tmp_path / f"restored-{point['id']}.img"
    run_restore(ctx, point["id"], str(target))
    return same_content(image, target)


def _copies(root: Path) -> list[Path]:
    """The cache's copies (not the host's chunk index kept beside them)."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".") and CHUNK_INDEX_DIR not in p.parts
    ]


def _damage_markers(s3_vault: S3Vault) -> list[str]:
    return list(open_backend(s3_vault.url(), cache=False).list("damaged/"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    testdisk.create_disk(path, DISK, seed=5, jobs=1)
    return path


def test_incrementals_with_a_warm_cache_make_few_requests(
    s3_vault: S3Vault, tmp_path: Path, image: Path
) -> None:
    init_vault(_ctx(s3_vault, tmp_path))
    full = _backup(_ctx(s3_vault, tmp_path), image)

    ctx = _ctx(s3_vault, tmp_path)
    unchanged = _backup(ctx, image)
    requests = ctx.requests
    assert unchanged["parent"] == full["id"]
    assert requests.total() <= UNCHANGED_BOUND, requests.by_kind()
    # A client start with a warm cache reads no immutable object from the store: not the
    # key file, an index object, the parent point, its manifest, nor its block records.
    for kind in ("keys", "index", "points", "manifests", "packs"):
        assert requests.count("get", kind) == 0, requests.by_kind()

    testdisk.mutate_disk(image, 2, seed=7, jobs=1)  # 5 of the 256 chunks
    ctx = _ctx(s3_vault, tmp_path)
    changed = _backup(ctx, image)
    assert ctx.requests.total() <= CHANGED_BOUND, ctx.requests.by_kind()
    # config, gc/pending twice, settings
    assert ctx.requests.count("get") == 4, ctx.requests.by_kind()
    assert changed["disks"][0]["stats"]["new"] > 0
    assert _restored(_ctx(s3_vault, tmp_path), changed, tmp_path, image)


def test_a_cold_cache_reads_each_immutable_object_once(
    s3_vault: S3Vault, tmp_path: Path, image: Path, _cache_dir: Path
) -> None:
    init_vault(_ctx(s3_vault, tmp_path))
    _backup(_ctx(s3_vault, tmp_path), image)
    testdisk.mutate_disk(image, 1, seed=8, jobs=1)
    parent = _backup(_ctx(s3_vault, tmp_path), image)
    store = open_backend(s3_vault.url(), cache=False)
    index_objects = len(list(store.list("index/")))
    vault = _ctx(s3_vault, tmp_path).open_vault(cached=False)
    records = vault.get_manifest(parent["disks"][0]["manifest"]).records
    locations = [vault.index.get(r) for r in records if r != ZERO_ID]
    record_packs = len({loc.pack_id for loc in locations if loc is not None})
    assert len(locations) == 4 and record_packs == 2  # the full's and the incremental's
    del vault
    # Cleared last: the host's chunk index (which the open above kept up to date) goes too,
    # so the next start reads every index object again.
    local_cache(None, clear=True)

    ctx = _ctx(s3_vault, tmp_path)
    _backup(ctx, image)
    cold = ctx.requests
    assert cold.count("get", "keys") == 1
    assert cold.count("get", "index") == index_objects
    assert cold.count("get", "points") == 1 and cold.count("get", "manifests") == 1
    # The parent's records: one GET per record pack, not one per block.
    assert cold.count("get", "packs") == record_packs, cold.by_kind()
    assert cold.total() <= UNCHANGED_BOUND + 1 + index_objects + 1 + 1 + 2

    ctx = _ctx(s3_vault, tmp_path)
    _backup(ctx, image)
    assert ctx.requests.total() <= UNCHANGED_BOUND, ctx.requests.by_kind()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_copies_are_dropped_and_the_result_is_right(
    s3_vault: S3Vault, tmp_path: Path, image: Path, _cache_dir: Path, damage: str
) -> None:
    init_vault(_ctx(s3_vault, tmp_path))
    _backup(_ctx(s3_vault, tmp_path), image)
    testdisk.mutate_disk(image, 2, seed=9, jobs=1)
    _backup(_ctx(s3_vault, tmp_path), image)
    copies = _copies(_cache_dir)
    assert {p.relative_to(_cache_dir).parts[1] for p in copies} == {
        "keys",
        "index",
        "points",
        "manifests",
        "packs",
    }
    for path in copies:
        raw = bytearray(path.read_bytes())
        if damage == "flip":
            raw[HEADER + (len(raw) - HEADER) // 2] ^= 0x10
        else:
            del raw[HEADER + (len(raw) - HEADER) // 2 :]
        path.write_bytes(bytes(raw))
    # Without the host's chunk index the next start needs the index objects' copies too.
    for index_dir in _cache_dir.glob(f"*/{CHUNK_INDEX_DIR}"):
        shutil.rmtree(index_dir)

    testdisk.mutate_disk(image, 2, seed=10, jobs=1)
    ctx = _ctx(s3_vault, tmp_path)
    point = _backup(ctx, image)
    # Every damaged copy that was needed was read again from the store.
    assert ctx.requests.count("get", "keys") == 1
    assert ctx.requests.count("get", "manifests") == 1
    assert ctx.requests.count("get", "index") >= 2
    assert _restored(_ctx(s3_vault, tmp_path), point, tmp_path, image)
    assert _damage_markers(s3_vault) == []  # no copy made the vault look damaged
    assert run_check(_ctx(s3_vault, tmp_path), read_data=True).ok


def test_a_forged_copy_is_read_again_from_the_store(
    s3_vault: S3Vault, tmp_path: Path, image: Path, _cache_dir: Path
) -> None:
    """A copy whose checksum holds but whose content the vault cannot open (the store's
    copy was damaged when it was kept, say): the vault drops it and reads the store's."""
    init_vault(_ctx(s3_vault, tmp_path))
    first = _backup(_ctx(s3_vault, tmp_path), image)
    [manifest] = [p for p in _copies(_cache_dir) if p.parent.name == "manifests"]
    forged = os.urandom(manifest.stat().st_size - HEADER)
    manifest.write_bytes(manifest.read_bytes()[:5] + blake3.blake3(forged).digest() + forged)
    ctx = _ctx(s3_vault, tmp_path)
    second = _backup(ctx, image)
    assert second["parent"] == first["id"]
    assert second["disks"][0]["stats"]["new"] == 0  # the parent was read: nothing stored again
    assert ctx.requests.count("get", "manifests") == 1
    assert _restored(_ctx(s3_vault, tmp_path), second, tmp_path, image)


def test_another_vaults_copies_are_never_used(
    s3_vault: S3Vault, tmp_path: Path, image: Path, _cache_dir: Path
) -> None:
    first_id = init_vault(_ctx(s3_vault, tmp_path)).config.vault_id
    _backup(_ctx(s3_vault, tmp_path), image)
    # The prefix emptied and initialised again, with the same passphrase: another vault.
    store = open_backend(s3_vault.url(), cache=False)
    for key in list(store.list()):
        store.delete(key)
    second_id = init_vault(_ctx(s3_vault, tmp_path)).config.vault_id
    assert second_id != first_id
    other = tmp_path / "other.img"
    testdisk.create_disk(other, DISK, seed=6, jobs=1)
    ctx = _ctx(s3_vault, tmp_path)
    point = _backup(ctx, other)
    assert point["type"] == "full"  # the old vault's points are nowhere to be seen
    assert ctx.requests.count("get", "keys") == 1  # the new key file, not the old copy
    assert _restored(_ctx(s3_vault, tmp_path), point, tmp_path, other)
    assert _damage_markers(s3_vault) == []
    vaults = {u["vault_id"] for u in local_cache(None)["vaults"]}
    assert vaults == {first_id, second_id}  # the old copies are only left to be evicted


def test_the_cache_keeps_to_its_bound(
    s3_vault: S3Vault,
    tmp_path: Path,
    image: Path,
    _cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 36 KiB: every copy fits (a quarter: 9 KiB, the full's record pack takes 8.4), and
    # each backup adds about 6 KiB of copies, so from the fifth on the oldest must go.
    monkeypatch.setenv(CACHE_LIMIT_ENV, "36K")
    limit = 36 * 1024
    init_vault(_ctx(s3_vault, tmp_path))
    points = []
    for seed in range(11, 18):
        points.append(_backup(_ctx(s3_vault, tmp_path), image)["id"])
        held = sum(p.stat().st_size for p in _copies(_cache_dir))
        assert 0 < held <= limit
        testdisk.mutate_disk(image, 2, seed=seed, jobs=1)
    kept = {p.name for p in _copies(_cache_dir) if p.parent.name == "points"}
    assert points[0] not in kept and points[-1] in kept  # least recently used first
    assert local_cache(None)["limit"] == limit
    point = _backup(_ctx(s3_vault, tmp_path), image)
    assert _restored(_ctx(s3_vault, tmp_path), point, tmp_path, image)


def test_check_reads_the_store_not_the_cache(
    s3_vault: S3Vault, tmp_path: Path, image: Path
) -> None:
    init_vault(_ctx(s3_vault, tmp_path))
    first = _backup(_ctx(s3_vault, tmp_path), image)
    manifest = first["disks"][0]["manifest"]
    s3_vault.client.delete_object(Bucket=s3_vault.bucket, Key=f"vault/manifests/{manifest}")
    report = run_check(_ctx(s3_vault, tmp_path))
    assert not report.ok
    assert any(manifest in p.object or manifest in p.message for p in report.problems)
    # A backup may still compare with the cached parent (its content is right), and its
    # commit stores the same manifest again: the vault is whole again.
    second = _backup(_ctx(s3_vault, tmp_path), image)
    assert second["disks"][0]["stats"]["new"] == 0
    assert run_check(_ctx(s3_vault, tmp_path), read_data=True).ok


def test_cli_requests_and_vault_cache(s3_vault: S3Vault, tmp_path: Path, image: Path) -> None:
    env = {
        **s3_vault.server.env(),
        "VMVAULT_CATALOG": f"sqlite:///{tmp_path / 'cat.db'}",
        "VMVAULT_VAULT": s3_vault.url("cli"),
    }
    assert run_cli("init", "--json", env=env).returncode == 0
    backup = run_cli("backup", str(image), "--vm", "web", "--json", env=env)
    assert backup.returncode == 0, backup.stderr
    requests = json.loads(backup.stdout)["requests"]
    assert set(requests) == {"total", "ops", "bytes_in", "bytes_out"}
    assert requests["total"] == sum(requests["ops"].values()) > 0
    assert requests["bytes_out"] > 0

    shown = run_cli("vault", "cache", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["path"] == str(cache_root()) and doc["enabled"] and doc["limit"] == 1 << 30
    [vault] = doc["vaults"]
    assert vault["location"] == f"s3://{s3_vault.bucket}/cli"
    assert vault["entries"] == doc["entries"] > 0 and vault["size"] == doc["size"] > 0
    human = run_cli("vault", "cache", env=env)
    assert vault["vault_id"] in human.stdout and "limit 1.0 GiB" in human.stdout

    other = run_cli("vault", "cache", "--vault", s3_vault.url("elsewhere"), "--json", env=env)
    assert json.loads(other.stdout)["vaults"] == []
    cleared = run_cli("vault", "cache", "--clear", "--json", env=env)
    doc = json.loads(cleared.stdout)
    assert doc["cleared"] == {"entries": vault["entries"], "size": vault["size"]}
    assert doc["vaults"] == [] and doc["entries"] == 0

    uncached = run_cli("--no-cache", "backup", str(image), "--vm", "web", "--json", env=env)
    assert uncached.returncode == 0, uncached.stderr
    assert json.loads(run_cli("vault", "cache", "--json", env=env).stdout)["entries"] == 0
    listing = run_cli("vault", "cache", "--vault", str(tmp_path / "dir"), env=env)
    assert "no cache" in listing.stdout


def test_a_restore_from_the_store_reads_about_one_range_per_pack(
    s3_vault: S3Vault, tmp_path: Path
) -> None:
    """Blocks restored four packs' worth at a time from an object store: a block stores
    under half a pack, so with one pack's worth per task each pack was read in several
    requests; now the reads of a task coalesce to about one per pack it touches."""
    image = tmp_path / "big.img"
    testdisk.create_disk(image, 96 * MiB, seed=12, jobs=1)  # 24 blocks, several packs
    init_vault(_ctx(s3_vault, tmp_path))
    point = _backup(_ctx(s3_vault, tmp_path), image)
    packs = len(list(open_backend(s3_vault.url(), cache=False).list("packs/")))
    assert packs >= 3

    ctx = Context(s3_vault.url(), f"sqlite:///{tmp_path / 'catalog.db'}", cache=False)
    assert _restored(ctx, point, tmp_path, image)
    # Two tasks (16 blocks each); each may read a pack its neighbour also reads.
    assert ctx.requests.count("get", "packs") <= packs + 2, ctx.requests.by_kind()
