"""The local cache of immutable objects (backends/cache.py) over a directory store: which
copies may answer a read, damaged copies, another vault's copies, the size bound.

The store is a LocalBackend under a CountingBackend, so each test counts what reached it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import blake3
import pytest

from vmvault.backends.cache import CachingBackend
from vmvault.backends.cache_files import (
    HEADER,
    MAGIC,
    ObjectCache,
    cache_enabled,
    cache_root,
    parse_size,
)
from vmvault.backends.local import LocalBackend
from vmvault.backends.metering import CountingBackend, RequestCounter
from vmvault.errors import ObjectMissing, UsageError

VAULT_A, VAULT_B = "a" * 32, "b" * 32


def _config(vault_id: str) -> bytes:
    return json.dumps({"format": "vmvault-vault", "version": 1, "vault_id": vault_id}).encode()


def _named(prefix: str, data: bytes) -> str:
    """An index object's or a pack's key: named by the BLAKE3 of its bytes."""
    digest = blake3.blake3(data).hexdigest()
    return f"packs/{digest[:2]}/{digest}" if prefix == "packs" else f"{prefix}/{digest}"


class Client:
    """One client start: a fresh wrapper (and counter) over the store and the shared root."""

    def __init__(self, store: LocalBackend, root: Path, limit: int = 1 << 30) -> None:
        self.counter = RequestCounter()
        self.cache = ObjectCache(root, limit)
        self.backend = CachingBackend(CountingBackend(store, self.counter), self.cache)

    def start(self) -> None:
        """What Vault.open and load_index read: config, the key slots, the index objects."""
        self.backend.get("config")
        for key in self.backend.list("keys/"):
            self.backend.get(key)
        for key in self.backend.list("index/"):
            self.backend.get(key)

    def gets(self, kind: str | None = None) -> int:
        return self.counter.count("get", kind)


@pytest.fixture
def store(tmp_path: Path) -> LocalBackend:
    backend = LocalBackend(tmp_path / "store", fsync=False)
    backend.put("config", _config(VAULT_A))
    backend.put("keys/default", b'{"sealed keys": 1}')
    return backend


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _copy(root: Path, vault_id: str, key: str) -> Path:
    return root / vault_id / key


def test_a_warm_start_reads_only_what_may_have_changed(store: LocalBackend, root: Path) -> None:
    index = [_named("index", b"index %d" % i) for i in range(3)]
    for i, key in enumerate(index):
        store.put(key, b"index %d" % i)
    store.put("manifests/" + "c" * 64, b"sealed manifest")
    cold = Client(store, root)
    cold.start()
    assert cold.backend.get("manifests/" + "c" * 64) == b"sealed manifest"
    assert cold.gets() == 1 + 1 + 3 + 1

    warm = Client(store, root)
    warm.start()
    assert warm.backend.get("manifests/" + "c" * 64) == b"sealed manifest"
    assert warm.gets() == 1  # config only: it says which vault, and so which copies
    assert warm.gets("config") == 1 and warm.counter.count("list") == 2  # keys/, index/
    assert [warm.backend.get(k) for k in index] == [b"index %d" % i for i in range(3)]


def test_index_copies_serve_only_keys_the_store_lists(store: LocalBackend, root: Path) -> None:
    kept, gone = _named("index", b"kept"), _named("index", b"gone")
    store.put(kept, b"kept")
    store.put(gone, b"gone")
    Client(store, root).start()
    assert _copy(root, VAULT_A, gone).is_file()
    store.delete(gone)  # a garbage collection elsewhere rewrote the index

    client = Client(store, root)
    client.backend.get("config")
    assert client.backend.get(kept) == b"kept"  # not listed yet in this process: the store's
    assert client.gets("index") == 1
    assert list(client.backend.list("index/")) == [kept]
    assert not _copy(root, VAULT_A, gone).exists()  # a key the listing lacks: dropped
    assert client.backend.get(kept) == b"kept"
    assert client.gets("index") == 1


def test_a_removed_key_slot_is_never_read_from_its_copy(store: LocalBackend, root: Path) -> None:
    """A removed key (``vault key remove``, ``passwd``) must not open the vault from a copy."""
    store.put("keys/0123456789abcdef", b'{"sealed keys": "old passphrase"}')
    Client(store, root).start()
    assert _copy(root, VAULT_A, "keys/0123456789abcdef").is_file()
    store.delete("keys/0123456789abcdef")

    client = Client(store, root)
    client.start()
    assert client.gets("keys") == 0  # keys/default from its copy, listed
    assert not _copy(root, VAULT_A, "keys/0123456789abcdef").exists()
    with pytest.raises(ObjectMissing):
        client.backend.get("keys/0123456789abcdef")


def test_point_copies_follow_the_listing_and_deletions(store: LocalBackend, root: Path) -> None:
    first = Client(store, root)
    first.backend.get("config")
    first.backend.create("points/p1", b"sealed point")  # written through
    assert list(first.backend.list("points/")) == ["points/p1"]
    assert first.backend.get("points/p1") == b"sealed point"
    assert first.gets("points") == 0
    first.backend.delete("points/p1")  # forget: the copy goes with it
    assert not _copy(root, VAULT_A, "points/p1").exists()


def test_mutable_objects_are_never_kept(store: LocalBackend, root: Path) -> None:
    mutable = ["settings", "gc/pending", "locks/backup-1", "damaged/" + "d" * 64, "protection/x"]
    for key in mutable:
        store.put(key, b"v1")
    for start, reads in ((1, 2), (2, 1)):  # config and keys/default, then config only
        client = Client(store, root)
        client.start()
        for key in mutable:
            assert client.backend.get(key) == b"v1"
        assert client.gets() == reads + len(mutable), start
    kept = {p.relative_to(root / VAULT_A).as_posix() for p in (root / VAULT_A).rglob("*")}
    assert kept == {"keys", "keys/default", ".location"}


def test_questions_about_the_store_are_never_answered_from_a_copy(
    store: LocalBackend, root: Path
) -> None:
    key = _named("index", b"x")
    store.put(key, b"x")
    client = Client(store, root)
    client.start()
    store.delete(key)
    assert not client.backend.exists(key)
    with pytest.raises(Exception, match="missing"):
        client.backend.size(key)


@pytest.mark.parametrize(
    "damage",
    ["flip", "truncate", "empty", "header only", "no magic"],
)
def test_a_damaged_copy_is_dropped_and_the_store_read(
    store: LocalBackend, root: Path, damage: str
) -> None:
    index = _named("index", b"index object " * 100)
    store.put(index, b"index object " * 100)
    store.put("manifests/" + "e" * 64, b"manifest " * 100)
    Client(store, root).start()
    Client(store, root).backend.get("manifests/" + "e" * 64)  # (a fresh start: unbound)
    client = Client(store, root)
    client.backend.get("config")
    client.backend.get("manifests/" + "e" * 64)
    for key in ("keys/default", index, "manifests/" + "e" * 64):
        path = _copy(root, VAULT_A, key)
        raw = bytearray(path.read_bytes())
        if damage == "flip":
            raw[-3] ^= 0x40
        elif damage == "truncate":
            del raw[-5:]
        elif damage == "empty":
            raw.clear()
        elif damage == "header only":
            del raw[HEADER:]
        else:
            raw[:4] = b"XXXX"
        path.write_bytes(bytes(raw))

    client = Client(store, root)
    client.start()
    assert client.backend.get(index) == b"index object " * 100
    assert client.backend.get("keys/default") == b'{"sealed keys": 1}'
    assert client.backend.get("manifests/" + "e" * 64) == b"manifest " * 100
    assert client.gets() == 1 + 3  # config, and each damaged copy read again from the store
    again = Client(store, root)  # the store's bytes were kept again, intact
    again.start()
    again.backend.get("manifests/" + "e" * 64)
    assert again.gets() == 1


def test_an_index_copy_under_another_name_is_refused(store: LocalBackend, root: Path) -> None:
    one, two = _named("index", b"one"), _named("index", b"two")
    store.put(one, b"one")
    store.put(two, b"two")
    Client(store, root).start()
    # A whole, self-consistent copy, but of another object: its name says otherwise.
    _copy(root, VAULT_A, two).write_bytes(_copy(root, VAULT_A, one).read_bytes())
    client = Client(store, root)
    client.start()
    assert client.backend.get(two) == b"two"
    assert client.gets("index") == 1


def test_another_vaults_copies_are_never_used(store: LocalBackend, root: Path) -> None:
    manifest = "manifests/" + "f" * 64
    store.put(manifest, b"manifest of A")
    client = Client(store, root)
    client.start()
    client.backend.get(manifest)
    # The location is emptied and initialised again: another vault, other keys.
    store.put("config", _config(VAULT_B))
    store.put("keys/default", b'{"sealed keys": 2}')
    store.put(manifest, b"manifest of B")
    client = Client(store, root)
    client.start()
    assert client.backend.get("keys/default") == b'{"sealed keys": 2}'
    assert client.backend.get(manifest) == b"manifest of B"
    assert client.gets() == 3
    assert client.backend.vault_id == VAULT_B
    assert (root / VAULT_A / "keys" / "default").is_file()  # left alone, unused


def test_no_copies_before_the_config_says_which_vault(store: LocalBackend, root: Path) -> None:
    client = Client(store, root)
    client.backend.get("keys/default")  # no config read yet: no vault, no cache
    client.backend.get("keys/default")
    assert client.gets() == 2 and not root.exists()
    store.put("config", b"not json")
    client.backend.get("config")
    assert client.backend.vault_id is None
    store.put("config", json.dumps({"vault_id": "../escape"}).encode())
    client.backend.get("config")
    assert client.backend.vault_id is None  # a vault id is 32 hex digits, nothing else


def test_record_packs_held_and_remembered(store: LocalBackend, root: Path) -> None:
    pack = os.urandom(50_000)
    key = _named("packs", pack)
    store.put(key, pack)
    client = Client(store, root)
    client.backend.get("config")
    assert client.backend.hold(key, len(pack))
    assert client.gets("packs") == 1
    ranges = [(0, 100), (1000, 5000), (49_000, 1000)]
    for offset, length in ranges:
        assert client.backend.get(key, offset, length) == pack[offset : offset + length]
    assert client.gets("packs") == 1  # the ranges came from the copy

    later = Client(store, root)
    later.backend.get("config")
    assert later.backend.hold(key, len(pack))
    assert later.backend.get(key, 7, 70) == pack[7:77]
    assert later.gets("packs") == 0

    written = [os.urandom(3000), os.urandom(4000)]
    new_key = _named("packs", b"".join(written))
    later.backend.create(new_key, written)
    later.backend.remember(new_key, written)  # as PackWriter does for a record pack
    assert later.backend.hold(new_key, 7000)
    assert later.backend.get(new_key, 2990, 20) == b"".join(written)[2990:3010]
    assert later.gets("packs") == 0


def test_a_remembered_pack_is_used_whatever_its_bound(store: LocalBackend, root: Path) -> None:
    written = [os.urandom(2000)]
    key = _named("packs", written[0])
    client = Client(store, root, limit=16_000)
    client.backend.get("config")
    client.backend.create(key, written)
    client.backend.remember(key, written)
    # A bound the cache could not keep: no fetch for it, but the copy it has is used.
    assert client.backend.hold(key, 1 << 30)
    assert client.backend.get(key, 100, 10) == written[0][100:110]
    assert client.gets("packs") == 0


def test_a_damaged_pack_copy_is_fetched_again(store: LocalBackend, root: Path) -> None:
    pack = os.urandom(20_000)
    key = _named("packs", pack)
    store.put(key, pack)
    first = Client(store, root)
    first.backend.get("config")
    first.backend.hold(key, len(pack))
    path = _copy(root, VAULT_A, key)
    raw = bytearray(path.read_bytes())
    raw[HEADER + 10] ^= 1
    path.write_bytes(bytes(raw))
    client = Client(store, root)
    client.backend.get("config")
    assert client.backend.hold(key, len(pack))  # verified before use: refetched
    assert client.backend.get(key, 0, 20) == pack[:20]
    assert client.gets("packs") == 1


def test_packs_not_held_are_read_from_the_store(store: LocalBackend, root: Path) -> None:
    pack = os.urandom(10_000)
    key = _named("packs", pack)
    store.put(key, pack)
    damaged_key = _named("packs", b"what it was")
    store.put(damaged_key, b"what it is now")
    client = Client(store, root, limit=16_000)
    client.backend.get("config")
    assert not client.backend.hold(key, 8_000)  # over a quarter of the bound: not fetched
    assert client.gets("packs") == 0
    assert not client.backend.hold(damaged_key, 100)  # bytes not its name: not kept
    assert not client.backend.hold(damaged_key, 100)  # nor fetched again
    assert client.gets("packs") == 1
    assert client.backend.get(key, 0, 10) == pack[:10]  # never held: the store
    assert client.backend.get(damaged_key, 0, 4) == b"what"
    assert client.gets("packs") == 3


def test_uncache_says_whether_the_copy_answered(store: LocalBackend, root: Path) -> None:
    manifest = "manifests/" + "9" * 64
    store.put(manifest, b"m")
    client = Client(store, root)
    client.start()
    client.backend.get(manifest)
    assert not client.backend.uncache(manifest)  # that read was the store's
    client.backend.get(manifest)  # kept again by that read
    client.backend.get(manifest)
    assert client.backend.uncache(manifest)  # this one came from the copy: dropped
    assert not _copy(root, VAULT_A, manifest).exists()


def test_eviction_keeps_the_most_recently_used(root: Path) -> None:
    cache = ObjectCache(root, limit=10 * (1000 + HEADER))
    keys = [f"manifests/{i:064x}" for i in range(10)]
    for age, key in enumerate(keys):
        assert cache.write(VAULT_A, key, [bytes([age]) * 1000])
        os.utime(_copy(root, VAULT_A, key), (1e9 + age, 1e9 + age))  # oldest first
    fresh = ObjectCache(root, limit=10 * (1000 + HEADER))
    assert fresh.read(VAULT_A, keys[0]) == bytes([0]) * 1000  # used: now the newest
    assert fresh.write(VAULT_B, "manifests/" + "f" * 64, [b"x" * 1000])  # over the bound
    left = {key for key in keys if _copy(root, VAULT_A, key).exists()}
    assert keys[0] in left and keys[1] not in left and keys[2] not in left
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name[0] != ".")
    assert total <= fresh.limit * 0.9
    assert (root / VAULT_B / "manifests" / ("f" * 64)).exists()


def test_a_copy_over_a_quarter_of_the_bound_is_not_kept(root: Path) -> None:
    cache = ObjectCache(root, limit=4000)
    assert not cache.write(VAULT_A, "manifests/" + "1" * 64, [b"x" * 1001])
    assert cache.write(VAULT_A, "manifests/" + "2" * 64, [b"x" * 1000])


def test_stale_temporary_files_are_removed(root: Path) -> None:
    cache = ObjectCache(root, limit=1 << 20)
    cache.write(VAULT_A, "manifests/" + "1" * 64, [b"x"])
    stale = root / VAULT_A / "manifests" / ".tmp-crashed.123"
    stale.write_bytes(b"half")
    os.utime(stale, (1e9, 1e9))
    cache.evict()
    assert not stale.exists()


def test_copies_are_private_and_hold_the_bytes_as_stored(store: LocalBackend, root: Path) -> None:
    key = _named("index", b"sealed index")
    store.put(key, b"sealed index")
    Client(store, root).start()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in root.rglob("*"):
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path
    raw = _copy(root, VAULT_A, key).read_bytes()
    assert raw == MAGIC + blake3.blake3(b"sealed index").digest() + b"sealed index"
    assert (root / VAULT_A / ".location").read_text() == store.describe()


def test_an_unusable_cache_directory_only_costs_requests(
    store: LocalBackend, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    for _ in range(2):
        client = Client(store, blocker / "cache")
        client.start()
        assert client.gets() == 2
        assert client.backend.vault_id is None


def test_clear_and_usage(store: LocalBackend, root: Path) -> None:
    Client(store, root).start()
    cache = ObjectCache(root)
    [usage] = cache.usage()
    assert (usage.vault_id, usage.location, usage.entries) == (VAULT_A, store.describe(), 1)
    assert cache.clear([VAULT_B]) == (0, 0)
    assert cache.clear() == (1, usage.size)
    assert cache.usage() == []


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VMVAULT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "vmvault"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_root() == Path.home() / ".cache" / "vmvault"
    monkeypatch.setenv("VMVAULT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    assert cache_enabled()
    for off in ("1", "yes", "true"):
        monkeypatch.setenv("VMVAULT_NO_CACHE", off)
        assert not cache_enabled()
    monkeypatch.setenv("VMVAULT_NO_CACHE", "0")
    assert cache_enabled()
    assert parse_size("512M") == 512 << 20
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("1000") == 1000
    with pytest.raises(UsageError):
        parse_size("lots")
