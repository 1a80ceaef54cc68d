"""PackWriter's uploaders: several at once, within the bound, and still safe.

The store is an in-memory fake whose puts take time (or wait for the test): the unit under
test is the writer's threading, not a backend. What must hold whatever the number of
uploaders: uploads overlap up to ``upload_threads`` and no further; at most ``max_pending``
sealed packs wait or are uploading (a worker sealing one more waits); an index object names
only packs whose put has returned; the first failed upload fails the writer; ``flush``
returns once every pack is durable and indexed.
"""

from __future__ import annotations

import builtins
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmvault.backends.base import Payload
from vmvault.backends.local import LocalBackend
from vmvault.backends.retry import RetryingBackend
from vmvault.backends.s3 import S3Backend
from vmvault.errors import ObjectMissing, VmvaultError
from vmvault.vault.crypto import Cipher, new_master_keys
from vmvault.vault.format import AAD_INDEX, KIND_DATA, decode_index
from vmvault.vault.index import ChunkIndex
from vmvault.vault.packs import PackWriter, pack_key
from vmvault.vault.vault import Vault

TARGET = 4096  # each blob below fills a pack: one add, one sealed pack
WAIT = 10.0  # seconds a test waits for a thread before it calls it stuck


class StoreFailed(VmvaultError):
    code = "backend_error"


class SlowStore:
    """In-memory objects; a pack's put takes ``delay`` seconds (a random share of it with
    ``jitter``), or waits until ``gate`` is set. It records how many puts run at once, and
    checks each index object when it is written: every pack it names must be stored."""

    def __init__(self, delay: float = 0.0, *, jitter: bool = False, cipher: Cipher) -> None:
        self.delay, self.jitter, self.cipher = delay, jitter, cipher
        self.objects: dict[str, bytes] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.fail_pack: int | None = None  # the n-th pack put (1-based) raises
        self.running = self.peak = self.pack_puts = 0
        self.unindexed_named: list[str] = []  # packs an index object named before they were
        self.indexed: set[str] = set()
        self._lock = threading.Lock()
        self._rng = random.Random(7)

    def put(self, key: str, data: Payload) -> None:
        body = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else b"".join(data)
        if key.startswith("index/"):
            for pack_id, _ in decode_index(self.cipher.open(body, AAD_INDEX, key), key):
                name = pack_key(pack_id)
                with self._lock:
                    if name not in self.objects:
                        self.unindexed_named.append(name)
                    self.indexed.add(name)
            with self._lock:
                self.objects[key] = body
            return
        with self._lock:
            self.pack_puts += 1
            number = self.pack_puts
            self.running += 1
            self.peak = max(self.peak, self.running)
            delay = self.delay * (self._rng.random() if self.jitter else 1.0)
        try:
            assert self.gate.wait(WAIT), "the test never opened the gate"
            time.sleep(delay)
            if number == self.fail_pack:
                raise StoreFailed(f"the store refused {key}")
            with self._lock:
                self.objects[key] = body
        finally:
            with self._lock:
                self.running -= 1

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            body = self.objects[key]
        except KeyError:
            raise ObjectMissing(key) from None
        return body[offset:] if length is None else body[offset : offset + length]

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self.objects if k.startswith(prefix)))

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(key, None)

    def size(self, key: str) -> int:
        return len(self.get(key))

    def modified(self, key: str) -> float:
        return 0.0

    def describe(self) -> str:
        return "memory"

    def packs(self) -> builtins.list[str]:
        return [k for k in self.objects if k.startswith("packs/")]


def _writer(store: SlowStore, cipher: Cipher, **options: int) -> tuple[PackWriter, ChunkIndex]:
    index = ChunkIndex()
    return PackWriter(store, cipher, index, pack_target=TARGET, **options), index


def _add_packs(writer: PackWriter, count: int, first: int = 0) -> list[bytes]:
    """``count`` blobs of one chunk each, every one filling a pack; their chunk ids."""
    ids = []
    for n in range(first, first + count):
        chunk_id = n.to_bytes(32, "big")
        writer.add(KIND_DATA, [bytes([n % 256]) * TARGET], [(chunk_id, TARGET)])
        ids.append(chunk_id)
    return ids


@pytest.fixture
def cipher() -> Cipher:
    return new_master_keys("0" * 32).cipher()


@pytest.mark.parametrize("threads", [1, 4])
def test_uploads_overlap_up_to_the_thread_count(cipher: Cipher, threads: int) -> None:
    store = SlowStore(0.1, cipher=cipher)  # long enough for every uploader to start one
    writer, index = _writer(store, cipher, upload_threads=threads)
    try:
        ids = _add_packs(writer, 12)
        writer.flush()
    finally:
        writer.close()
    assert store.peak == threads
    assert len(store.packs()) == 12  # flush waited for every one
    assert all(index.available(i) for i in ids)
    assert store.indexed == set(store.packs())
    assert not store.unindexed_named


def test_pending_packs_are_bounded(cipher: Cipher) -> None:
    """With the store stuck, the worker that seals one pack more than ``max_pending``
    waits: 2 uploading, 1 queued, the 4th add blocked; they all go once the store moves."""
    store = SlowStore(cipher=cipher)
    store.gate.clear()
    writer, _ = _writer(store, cipher, upload_threads=2, max_pending=3)
    added = []

    def produce() -> None:
        for n in range(8):
            _add_packs(writer, 1, first=n)
            added.append(n)

    producer = threading.Thread(target=produce)
    try:
        producer.start()
        deadline = time.monotonic() + WAIT
        while (store.running < 2 or len(added) < 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # long enough for a 4th add to get through if it could
        assert store.running == 2 and store.peak == 2
        assert len(added) == 3 and producer.is_alive()  # blocked in the 4th add
        store.gate.set()
        producer.join(WAIT)
        assert not producer.is_alive() and len(added) == 8
        writer.flush()
    finally:
        store.gate.set()
        writer.close()
    assert len(store.packs()) == 8 and store.peak == 2


def test_index_objects_name_only_durable_packs(cipher: Cipher) -> None:
    """Checkpoints every 2 packs while 4 uploads of uneven length overlap: each index
    object is checked, when written, against the packs the store holds."""
    store = SlowStore(0.03, jitter=True, cipher=cipher)
    writer, _ = _writer(store, cipher, upload_threads=4, index_every=2)
    try:
        _add_packs(writer, 24)
        writer.flush()
    finally:
        writer.close()
    assert store.peak > 1
    assert not store.unindexed_named
    assert store.indexed == set(store.packs()) and len(store.indexed) == 24


def test_a_failed_upload_fails_the_writer(cipher: Cipher) -> None:
    """One upload among several fails: the pipeline's next add or the flush raises that
    error, no index object is written at the flush, and the threads end at close."""
    store = SlowStore(0.02, cipher=cipher)
    store.fail_pack = 3
    before = set(threading.enumerate())
    writer, _ = _writer(store, cipher, upload_threads=4, index_every=1000)
    with pytest.raises(StoreFailed, match="the store refused packs/"):
        try:
            _add_packs(writer, 20)
            writer.flush()
        finally:
            writer.close()
    assert not [k for k in store.objects if k.startswith("index/")]
    assert len(store.packs()) < 20  # packs queued after the failure were not uploaded
    assert not set(threading.enumerate()) - before  # every uploader ended


def test_bad_settings_are_refused(cipher: Cipher) -> None:
    store = SlowStore(cipher=cipher)
    for options in ({"upload_threads": 0}, {"upload_threads": 4, "max_pending": 3}):
        with pytest.raises(ValueError):
            _writer(store, cipher, **options)


def test_the_backend_decides_how_many_uploaders(cipher: Cipher, tmp_path: Path) -> None:
    """One for a directory, four for S3 (through the retry layer), what a backend's
    ``parallel_writes`` says otherwise, one without the hint."""
    assert RetryingBackend(LocalBackend(tmp_path)).parallel_writes == 1
    assert RetryingBackend(S3Backend("bucket", "v", client=None)).parallel_writes == 4
    store = SlowStore(cipher=cipher)
    vault = Vault.init(store, "passphrase", scrypt={"n": 2**10, "r": 8, "p": 1})
    for hint, chosen, expected in ((None, None, 1), (3, None, 3), (3, 2, 2)):
        if hint is not None:
            store.parallel_writes = hint  # type: ignore[attr-defined]
        before = set(threading.enumerate())
        writer = vault.pack_writer(upload_threads=chosen)  # a caller's choice wins
        try:
            uploaders = set(threading.enumerate()) - before
            assert len(uploaders) == expected
            assert all(t.name.startswith("pack-upload") for t in uploaders)
        finally:
            writer.close()
