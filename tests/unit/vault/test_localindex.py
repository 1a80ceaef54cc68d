"""The host's persistent chunk index (vault/localindex.py and its parts) and the ChunkIndex over it.

Index objects are stood in for by a dict of key -> packs, read through a counting reader,
so each test says exactly which objects an open had to read."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vmvault.backends.local import LocalBackend
from vmvault.errors import CorruptObject
from vmvault.vault import chunkfilter, indexreads, indexrows, mappedpages
from vmvault.vault.format import PackEntry, encode_index
from vmvault.vault.index import ChunkIndex, LocalIndexDamaged
from vmvault.vault.indexgeneration import DATA, MAP_SIZE
from vmvault.vault.localindex import CURRENT, LocalIndex, index_dir
from vmvault.vault.vault import Vault

Packs = list[tuple[bytes, list[PackEntry]]]
VAULT_ID = "0123456789abcdef0123456789abcdef"
SRC = str(Path(__file__).resolve().parents[3] / "src")


def cid(name: str) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=32).digest()


def pack(name: str, chunks: list[str]) -> tuple[bytes, list[PackEntry]]:
    entries = [PackEntry(cid(c), 1, 5 + 100 * i, 100, 0, 64) for i, c in enumerate(chunks)]
    return cid("pack " + name), entries


class Objects:
    """The vault's index objects, and which ones each open read."""

    def __init__(self) -> None:
        self.objects: dict[str, Packs] = {}
        self.reads: list[str] = []

    def add(self, key: str, *packs: tuple[bytes, list[PackEntry]]) -> None:
        self.objects[key] = list(packs)

    as_records = False  # answer as a vault does: numpy records decoded from the bytes

    def read(self, key: str) -> Packs:
        self.reads.append(key)
        if key not in self.objects:
            raise CorruptObject(f"{key}: damaged")
        if self.as_records:
            return indexrows.decode_index_arrays(encode_index(self.objects[key]), key)
        return self.objects[key]

    def sync(self, store: LocalIndex) -> dict[str, object]:
        self.reads = []
        return dict(store.sync(sorted(self.objects), self.read))


@pytest.fixture(autouse=True, params=["python", "numpy"])
def write_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: small writes take a plain Python path, large ones numpy's; index
    objects read from a vault come as numpy records (``decode_index_arrays``)."""
    if request.param == "numpy":
        monkeypatch.setattr(indexrows, "SMALL_WRITE", 0)
        monkeypatch.setattr(Objects, "as_records", True)
    return str(request.param)


@pytest.fixture
def objects() -> Objects:
    found = Objects()
    found.add("index/a", pack("p1", ["c1", "c2"]))
    found.add("index/b", pack("p2", ["c3"]))
    return found


def opened(
    directory: Path, objects: Objects, *, missing: frozenset[bytes] = frozenset()
) -> ChunkIndex:
    store = LocalIndex(directory, VAULT_ID)
    objects.sync(store)
    named = {p for packs in objects.objects.values() for p, _ in packs}
    return ChunkIndex.opened(store, named - missing)


def test_a_second_open_reads_no_index_object(tmp_path: Path, objects: Objects) -> None:
    first = LocalIndex(tmp_path, VAULT_ID)
    objects.sync(first)
    assert sorted(objects.reads) == ["index/a", "index/b"] and first.rebuilt
    again = LocalIndex(tmp_path, VAULT_ID)  # another process, the next day
    objects.sync(again)
    assert objects.reads == [] and not again.rebuilt
    index = ChunkIndex.opened(again, {cid("pack p1"), cid("pack p2")})
    assert len(index) == 3
    loc = index.get(cid("c2"))
    assert loc is not None and (loc.pack_id, loc.offset, loc.raw_length) == (
        cid("pack p1"),
        105,
        64,
    )
    assert index.claimable(cid("c3")) and not index.claimable(cid("new"))
    assert cid("c1") in index and cid("new") not in index
    assert sorted(c for c, _ in index.items()) == sorted(cid(c) for c in ("c1", "c2", "c3"))


def test_new_index_objects_are_absorbed_alone(tmp_path: Path, objects: Objects) -> None:
    objects.sync(LocalIndex(tmp_path, VAULT_ID))
    objects.add("index/c", pack("p3", ["c4", "c1"]))  # c1 again: a concurrent backup's copy
    store = LocalIndex(tmp_path, VAULT_ID)
    objects.sync(store)
    assert objects.reads == ["index/c"] and store.absorbed_now == 1 and not store.rebuilt
    index = ChunkIndex.opened(store, {cid(f"pack p{i}") for i in (1, 2, 3)})
    assert index.get(cid("c4")).pack_id == cid("pack p3")  # type: ignore[union-attr]
    assert index.get(cid("c1")).pack_id == cid("pack p1")  # type: ignore[union-attr]  # first wins
    assert index.has_pack(cid("pack p3")) and not index.has_pack(cid("pack p9"))


def test_a_vanished_index_object_rebuilds_the_index(tmp_path: Path, objects: Objects) -> None:
    objects.sync(LocalIndex(tmp_path, VAULT_ID))
    old = (tmp_path / CURRENT).read_text()
    # A collection deleted pack p2 and rewrote the index: object b is gone, d is new.
    del objects.objects["index/b"]
    del objects.objects["index/a"]
    objects.add("index/d", pack("p1", ["c1", "c2"]))
    store = LocalIndex(tmp_path, VAULT_ID)
    objects.sync(store)
    assert store.rebuilt and objects.reads == ["index/d"]
    assert (tmp_path / CURRENT).read_text() != old
    assert [p.name for p in tmp_path.glob("g-*")] == [(tmp_path / CURRENT).read_text().strip()]
    index = ChunkIndex.opened(store, {cid("pack p1")})
    assert cid("c3") not in index  # never a chunk the vault's index objects do not name
    assert not index.has_pack(cid("pack p2")) and len(index) == 2


def test_first_location_wins_across_objects_and_in_memory(tmp_path: Path) -> None:
    objects = Objects()
    objects.add("index/1", pack("p1", ["x", "y"]))
    objects.add("index/2", pack("p2", ["x"]))
    index = opened(tmp_path, objects)
    assert index.get(cid("x")).pack_id == cid("pack p1")  # type: ignore[union-attr]
    # This run's pack (not yet in an index object) does not displace the stored copy ...
    mine = pack("p3", ["x", "z"])
    index.add_pack(*mine)
    assert index.get(cid("x")).pack_id == cid("pack p1")  # type: ignore[union-attr]
    assert index.get(cid("z")).pack_id == cid("pack p3")  # type: ignore[union-attr]
    assert len(index) == 3
    # ... and once its index object is written the store takes it over from memory.
    index.absorbed("index/3", [mine])
    assert index._entries == {} and index.get(cid("z")).pack_id == cid("pack p3")  # type: ignore[union-attr]
    assert (
        sorted(LocalIndex(tmp_path, VAULT_ID).sync(["index/1", "index/2", "index/3"], objects.read))
        == []
    )
    assert objects.reads == ["index/1", "index/2"]  # the open above; index/3 was never read


def test_a_busy_lock_never_holds_up_a_writer(tmp_path: Path, objects: Objects) -> None:
    """Another process rebuilding (holding the update lock) does not stall a backup's
    uploader: its packs stay in memory and go to the store with the next index object."""
    import fcntl

    index = opened(tmp_path, objects)
    first, second = pack("p3", ["x"]), pack("p4", ["y"])
    fd = os.open(tmp_path / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process would
        index.add_pack(*first)
        index.absorbed("index/3", [first])  # returns at once
        assert index._packs == {cid("pack p3"): 1} and index.get(cid("x")) is not None
    finally:
        os.close(fd)
    index.add_pack(*second)
    index.absorbed("index/4", [second])
    assert index._entries == {} and index._unabsorbed == []
    objects.add("index/3", first)
    objects.add("index/4", second)
    again = LocalIndex(tmp_path, VAULT_ID)
    objects.sync(again)
    assert objects.reads == [] and len(ChunkIndex.opened(again, set())) == 5


def test_a_lost_packs_chunks_are_placeholders(tmp_path: Path) -> None:
    objects = Objects()
    objects.add("index/1", pack("lost", ["x", "y"]))
    objects.add("index/2", pack("kept", ["y"]))
    index = opened(tmp_path, objects, missing=frozenset({cid("pack lost")}))
    assert index.missing_packs() == [cid("pack lost")]
    assert index.get(cid("y")).pack_id == cid("pack kept")  # type: ignore[union-attr]
    assert index.available(cid("y")) and index.claimable(cid("y"))
    x = index.get(cid("x"))
    assert x is not None and x.pack_id == cid("pack lost")  # a placeholder: known, not usable
    assert not index.available(cid("x")) and not index.claimable(cid("x"))
    # A backup stores x again: this run's present copy replaces the placeholder.
    index.add_pack(*pack("again", ["x"]))
    assert index.get(cid("x")).pack_id == cid("pack again")  # type: ignore[union-attr]
    assert index.available(cid("x")) and index.claimable(cid("x"))
    assert dict(index.items())[cid("y")].pack_id == cid("pack kept")


def test_excluded_packs_are_readable_but_not_claimable(tmp_path: Path, objects: Objects) -> None:
    index = opened(tmp_path, objects)
    index.exclude_packs([cid("pack p1")])
    assert index.available(cid("c1")) and not index.claimable(cid("c1"))
    assert index.claimable(cid("c3"))
    assert index.missing_packs() == []


def test_the_writer_claims_a_chunk_of_an_excluded_pack_once(
    tmp_path: Path, objects: Objects
) -> None:
    """Claims are dropped once indexed, except those the index still refuses."""
    from vmvault.vault.crypto import new_master_keys
    from vmvault.vault.packs import PackWriter

    index = opened(tmp_path, objects)
    index.exclude_packs([cid("pack p1")])
    backend = LocalBackend(tmp_path / "vault", fsync=False)
    cipher = new_master_keys(VAULT_ID).cipher()
    writer = PackWriter(backend, cipher, index, pack_target=1)
    try:
        assert writer.claim(cid("c1")) and writer.claim(cid("n1"))
        writer.add(1, [b"blob1"], [(cid("c1"), 5)])
        writer.add(1, [b"blob2"], [(cid("n1"), 5)])
        writer.flush()
        assert not writer.claim(cid("c1"))  # still claimed: stored once in this run
        assert not writer.claim(cid("n1"))  # indexed now: the claim went, the index answers
        assert writer._claimed == {cid("c1")}
    finally:
        writer.close()


def test_the_local_index_lives_under_the_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMVAULT_CACHE_DIR", str(tmp_path / "cache"))
    assert index_dir(VAULT_ID) == tmp_path / "cache" / VAULT_ID / "chunk-index"
    store = LocalIndex.for_vault(VAULT_ID)
    Objects().sync(store)
    for d in (tmp_path / "cache", tmp_path / "cache" / VAULT_ID, store.directory):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    monkeypatch.delenv("VMVAULT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert index_dir(VAULT_ID) == tmp_path / "xdg" / "vmvault" / VAULT_ID / "chunk-index"


def test_an_unwritable_cache_falls_back_to_a_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objects: Objects
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VMVAULT_CACHE_DIR", str(blocker / "cache"))
    store = LocalIndex.for_vault(VAULT_ID)
    assert not store.directory.is_relative_to(blocker)
    objects.sync(store)
    assert len(ChunkIndex.opened(store, set())) == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no current", "other vault"])
def test_a_damaged_local_index_is_rebuilt(tmp_path: Path, objects: Objects, damage: str) -> None:
    objects.sync(LocalIndex(tmp_path, VAULT_ID))
    generation = tmp_path / (tmp_path / CURRENT).read_text().strip()
    if damage == "garbage":
        (generation / DATA).write_bytes(os.urandom(8192))
    elif damage == "truncated":
        os.truncate(generation / DATA, 100)
    elif damage == "no current":
        (tmp_path / CURRENT).write_text("../../etc\n")
    store = LocalIndex(tmp_path, "f" * 32 if damage == "other vault" else VAULT_ID)
    objects.sync(store)
    assert store.rebuilt and sorted(objects.reads) == ["index/a", "index/b"]
    assert len(ChunkIndex.opened(store, set())) == 3


def test_a_location_failing_its_checksum_stops_the_job_and_rebuilds(
    tmp_path: Path, objects: Objects
) -> None:
    import lmdb

    objects.sync(LocalIndex(tmp_path, VAULT_ID))
    generation = tmp_path / (tmp_path / CURRENT).read_text().strip()
    env = lmdb.open(str(generation), max_dbs=8, map_size=MAP_SIZE)
    with env.begin(write=True) as txn:
        chunks = env.open_db(b"chunks", txn=txn)
        value = bytearray(txn.get(cid("c1"), db=chunks))
        value[6] ^= 0x40  # the blob's offset, one bit
        txn.put(cid("c1"), bytes(value), db=chunks)
    env.close()
    index = opened(tmp_path, objects)
    assert objects.reads == []
    with pytest.raises(LocalIndexDamaged, match="rebuilt"):
        index.get(cid("c1"))
    store = LocalIndex(tmp_path, VAULT_ID)
    objects.sync(store)
    assert store.rebuilt
    assert ChunkIndex.opened(store, set()).get(cid("c1")).offset == 5  # type: ignore[union-attr]


def test_an_unreadable_index_object_is_tried_again(tmp_path: Path, objects: Objects) -> None:
    store = LocalIndex(tmp_path, VAULT_ID)
    problems = store.sync(["index/a", "index/b", "index/bad"], objects.read)
    assert list(problems) == ["index/bad"]
    again = LocalIndex(tmp_path, VAULT_ID)
    assert list(again.sync(["index/a", "index/b", "index/bad"], objects.read)) == ["index/bad"]
    assert objects.reads[-1] == "index/bad" and not again.rebuilt


def test_the_filter_grows_and_answers_for_every_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunkfilter, "FILTER_MIN_BITS", 8)  # 256 bits: grows after 16 entries
    objects = Objects()
    names = [f"c{i}" for i in range(300)]
    for i in range(0, 300, 50):
        objects.add(f"index/{i:03}", pack(f"p{i}", names[i : i + 50]))
    first = dict(list(objects.objects.items())[:1])
    LocalIndex(tmp_path, VAULT_ID).sync(sorted(first), first.__getitem__)  # 50: 2 ** 11 bits
    store = LocalIndex(tmp_path, VAULT_ID)
    objects.sync(store)  # 250 more, absorbed: the filter grows
    assert store.absorbed_now == 5 and not store.rebuilt
    assert store._gen is not None and store._gen.filter is not None
    assert store._gen.filter.log2 > 11
    index = ChunkIndex.opened(store, {p for o in objects.objects.values() for p, _ in o})
    assert all(index.claimable(cid(n)) for n in names)
    reopened = LocalIndex(tmp_path, VAULT_ID)  # maps the grown filter
    objects.sync(reopened)
    fresh = ChunkIndex.opened(reopened, set())
    assert all(cid(n) in fresh for n in names)
    assert sum(not store.may_contain(cid(f"new{i}")) for i in range(1000)) > 900


# -- several processes ------------------------------------------------------------------------

CHILD = """
import hashlib, os, sys, time
sys.path.insert(0, {src!r})
from vmvault.vault.format import PackEntry, encode_index
from vmvault.vault.localindex import LocalIndex

def cid(name):
    return hashlib.blake2b(name.encode(), digest_size=32).digest()

def read(key):
    n = int(key.rsplit("/", 1)[1])
    if os.environ.get("SLOW") and n == 3:
        print("reading", flush=True)
        time.sleep(60)  # killed here
    entries = [PackEntry(cid(f"c{{n}}-{{i}}"), 1, 5 + 100 * i, 100, 0, 64) for i in range(1000)]
    return [(cid(f"pack {{n}}"), entries)]

keys = [f"index/{{n}}" for n in range(int(sys.argv[2]))]
store = LocalIndex(__import__("pathlib").Path(sys.argv[1]), {vault!r})
store.sync(keys, read)
print("done", store.rebuilt, store.absorbed_now, len(store), flush=True)
"""


def child(directory: Path, objects: int, **env: str) -> subprocess.Popen[str]:
    script = CHILD.format(src=SRC, vault=VAULT_ID)
    return subprocess.Popen(
        [sys.executable, "-c", script, str(directory), str(objects)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def test_two_processes_open_at_once(tmp_path: Path) -> None:
    one, two = child(tmp_path, 8), child(tmp_path, 8)
    outs = [p.communicate(timeout=120)[0] for p in (one, two)]
    assert all(p.returncode == 0 for p in (one, two)), outs
    # One built the index; the other waited for the lock, then found nothing to read.
    assert sorted(o.split()[1:] for o in outs) == [
        ["False", "0", "8000"],
        ["True", "8", "8000"],
    ]
    later = child(tmp_path, 10)  # two new objects, absorbed alone
    assert later.communicate(timeout=120)[0].split()[1:] == ["False", "2", "10000"]


def test_kill_9_in_the_middle_of_an_update_leaves_a_correct_index(tmp_path: Path) -> None:
    first = child(tmp_path, 2)
    assert first.communicate(timeout=120)[0].startswith("done")
    slow = child(tmp_path, 6, SLOW="1")  # absorbs objects 2.., dies reading object 3
    assert slow.stdout is not None and slow.stdout.readline().strip() == "reading"
    os.kill(slow.pid, signal.SIGKILL)
    slow.wait()
    store = LocalIndex(tmp_path, VAULT_ID)
    store.sync([f"index/{n}" for n in range(2)], lambda key: [])  # nothing new was committed
    assert not store.rebuilt and len(store) == 2000
    assert child(tmp_path, 6).communicate(timeout=120)[0].split()[1:] == ["False", "4", "6000"]


def test_a_reader_is_not_disturbed_by_another_process_absorbing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexreads, "READER_AGE", 0.05)  # a thread's snapshot, renewed
    first = child(tmp_path, 2)
    first.communicate(timeout=120)
    store = LocalIndex(tmp_path, VAULT_ID)
    store.sync([f"index/{n}" for n in range(2)], lambda key: [])
    index = ChunkIndex.opened(store, {cid("pack 0"), cid("pack 1")})
    other = child(tmp_path, 4)
    while other.poll() is None:
        assert index.available(cid("c0-7"))
        time.sleep(0.01)
    assert other.returncode == 0
    time.sleep(0.1)
    assert index.available(cid("c3-7"))  # it sees what the other process absorbed


# -- through a vault --------------------------------------------------------------------------


def test_a_vault_opens_without_reading_absorbed_index_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalBackend(tmp_path / "vault", fsync=False)
    vault = Vault.init(backend, "pw", scrypt={"n": 2**4, "r": 1, "p": 1})
    vault.load_index()
    writer = vault.pack_writer()
    try:
        for i in range(3):
            chunk = cid(f"chunk {i}")
            assert writer.claim(chunk)
            writer.add(1, vault.seal_blob(0, b"x" * 10), [(chunk, 10)])
        writer.flush()
    finally:
        writer.close()
    [key] = backend.list("index/")
    read: list[str] = []
    real: Callable[[Vault, str], object] = Vault.read_index_arrays
    monkeypatch.setattr(Vault, "read_index_arrays", lambda v, k: read.append(k) or real(v, k))
    again = Vault.open(backend, "pw")
    assert read == [] and len(again.index) == 3  # the writer's own object was absorbed
    assert again.index.claimable(cid("chunk 1")) and again.index.missing_packs() == []
    # a pack lost from the vault: its chunks are placeholders after the next open
    [pack_key] = backend.list("packs/")
    backend.delete(pack_key)
    lost = Vault.open(backend, "pw")
    assert read == [] and len(lost.index.missing_packs()) == 1
    assert not lost.index.available(cid("chunk 1"))
    # `vault reindex` replaces the index objects: the host's index follows
    assert lost.rebuild_index() == (0, []) and list(backend.list("index/")) == []
    assert len(lost.index) == 0 and key not in read


def test_lookups_let_go_of_mapped_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objects: Objects
) -> None:
    """A worker's RSS stays its own: every TRIM_EVERY lookups the mapped index pages go back
    to the page cache; the answers do not change."""
    monkeypatch.setattr(indexreads, "TRIM_EVERY", 3)
    monkeypatch.setattr(mappedpages, "MAPPED_BUDGET", 1)  # one byte: always over
    index = opened(tmp_path, objects)
    store = index._store
    assert store is not None and store._gen is not None
    for _ in range(5):
        assert index.claimable(cid("c1")) and not index.claimable(cid("new"))
        assert index.get(cid("c3")).pack_id == cid("pack p2")  # type: ignore[union-attr]
    start, end = store._gen.mapped or (0, 0)
    assert end > start  # the data file's mapping was found in /proc/self/maps


def test_the_mapped_budget_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert mappedpages._mapped_budget() == mappedpages.MAPPED_BUDGET
    monkeypatch.setenv("VMVAULT_INDEX_MAPPED_MB", "0")
    assert mappedpages._mapped_budget() == 0  # never trim
    monkeypatch.setenv("VMVAULT_INDEX_MAPPED_MB", "1024")
    assert mappedpages._mapped_budget() == 1 << 30
    monkeypatch.setenv("VMVAULT_INDEX_MAPPED_MB", "lots")
    assert mappedpages._mapped_budget() == mappedpages.MAPPED_BUDGET


def test_a_collected_index_inside_the_open_lock_neither_blocks_nor_closes_a_live_one(
    tmp_path: Path, objects: Objects
) -> None:
    """A LocalIndex's finalizer runs wherever the garbage collector does, also inside
    ``open_generation``'s lock on the same thread: it must not wait for that lock, and the
    generation it lets go stays open while another index uses it."""
    from vmvault.vault import indexgeneration

    dropped = LocalIndex(tmp_path, VAULT_ID)
    objects.sync(dropped)
    kept = LocalIndex(tmp_path, VAULT_ID)
    objects.sync(kept)  # the same generation, two users
    finalizer = dropped._finalizer
    assert finalizer is not None and finalizer.alive
    done = threading.Event()

    def collect_inside_the_lock() -> None:
        with indexgeneration._OPEN_LOCK:  # as when a collection runs during an open
            finalizer()
        done.set()

    worker = threading.Thread(target=collect_inside_the_lock, daemon=True)
    worker.start()
    assert done.wait(10), "the finalizer waited for the lock its own thread held"
    again = LocalIndex(tmp_path, VAULT_ID)  # the next open counts the let-go user off
    objects.sync(again)
    index = ChunkIndex.opened(kept, {cid("pack p1"), cid("pack p2")})
    assert index.get(cid("c2")) is not None  # kept's generation still open
    kept.close()
    again.close()
