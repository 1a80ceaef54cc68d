"""Pack writing: many sealed blobs coalesced into one large object.

An object store charges per request and caps requests per second (the seed's storage
account limits), so chunks travel in packs of ``pack_target`` bytes (16 MiB by default).
Data blobs and block records go to separate packs, so the records of a backup sit together
and the next backup reads them back in a few large ranges.

Packs are sealed by the worker thread that fills them and handed through a queue to
``upload_threads`` uploader threads (1 for a local directory, where one writer keeps the
disk busy; several for an object store, where each PutObject spends most of its time
waiting on the network: see ``Vault.pack_writer``). At most ``max_pending`` sealed packs
wait or are being uploaded at any time (a worker that seals one more waits for a slot):
that bounds memory whatever the disk size and the number of uploaders.

A pack is named by an index object only once its put has returned (it is durable). Every
``index_every`` uploaded packs (and at ``flush``) an index object covering them is
written, so a crash loses at most the packs since the last index object, and even those
are recovered by reading their headers (see ``Vault.adopt_orphan_packs``). The first
upload that fails is kept and raised to the pipeline at its next ``add`` (and by
``flush``); packs queued after it are dropped, not uploaded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import blake3

from vmvault.backends.base import Backend, Payload, put_new
from vmvault.vault.crypto import Cipher
from vmvault.vault.format import (
    AAD_INDEX,
    AAD_PACK_HEADER,
    KIND_RECORD,
    PACK_MAGIC,
    PACK_TRAILER,
    PackEntry,
    encode_index,
    encode_pack_header,
)
from vmvault.vault.index import ChunkIndex


def pack_key(pack_id: bytes) -> str:
    hex_id = pack_id.hex()
    return f"packs/{hex_id[:2]}/{hex_id}"


def index_key(index_id: bytes) -> str:
    return f"index/{index_id.hex()}"


@dataclass
class _OpenPack:
    """A pack being filled: its parts are written with one gathered write, never joined."""

    parts: list[bytes] = field(default_factory=lambda: [PACK_MAGIC])
    size: int = len(PACK_MAGIC)
    entries: list[PackEntry] = field(default_factory=list)


_STOP = object()
SealedPack = tuple[bytes, list[PackEntry], list[bytes]]  # pack id, entries, the object's bytes


class PackWriter:
    def __init__(
        self,
        backend: Backend,
        cipher: Cipher,
        index: ChunkIndex,
        *,
        pack_target: int,
        upload_threads: int = 1,
        max_pending: int | None = None,
        index_every: int = 64,
    ) -> None:
        """``max_pending``: sealed packs queued or being uploaded, at most (by default two
        more than the uploaders, so each uploader finds the next pack waiting)."""
        if max_pending is None:
            max_pending = upload_threads + 2
        if upload_threads < 1 or max_pending < upload_threads:
            raise ValueError("upload_threads must be >= 1 and max_pending >= upload_threads")
        self._backend = backend
        self._remember: Callable[[str, Payload], None] | None = getattr(backend, "remember", None)
        self._cipher = cipher
        self._index = index
        self._target = pack_target
        self._index_every = index_every
        self._lock = threading.Lock()
        self._open: dict[int, _OpenPack] = {}
        self._claimed: set[bytes] = set()
        self._uploaded: list[tuple[bytes, list[PackEntry]]] = []  # not yet in an index object
        # The bound is a semaphore, not the queue's size: a pack being uploaded has left
        # the queue but still holds its memory until its put returns.
        self._slots = threading.Semaphore(max_pending)
        self._queue: queue.Queue[object] = queue.Queue()
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._upload_loop, name=f"pack-upload-{n}", daemon=True)
            for n in range(upload_threads)
        ]
        for thread in self._threads:
            thread.start()

    # -- called by pipeline workers ------------------------------------------------------

    def claim(self, chunk_id: bytes) -> bool:
        """True if the caller should store this chunk: it is neither in the vault nor claimed.

        A chunk that only lives in a pack garbage collection is removing counts as absent.
        """
        if self._index.claimable(chunk_id):
            return False
        with self._lock:
            if chunk_id in self._claimed:
                return False
            # The uploader drops a claim once its pack is indexed (under this lock): look
            # again, or a chunk indexed since the first look would be stored twice.
            if self._index.claimable(chunk_id):
                return False
            self._claimed.add(chunk_id)
            return True

    def add(self, kind: int, sealed: list[bytes], chunks: Sequence[tuple[bytes, int]]) -> None:
        """Append one sealed blob (its parts) holding ``chunks`` (id, raw length), in order."""
        self._raise_if_failed()
        full: SealedPack | None = None
        length = sum(len(p) for p in sealed)
        with self._lock:
            pack = self._open.setdefault(kind, _OpenPack())
            offset, start = pack.size, 0
            for chunk_id, raw_length in chunks:
                pack.entries.append(PackEntry(chunk_id, kind, offset, length, start, raw_length))
                start += raw_length
            pack.parts += sealed
            pack.size += length
            if pack.size >= self._target:
                del self._open[kind]
                full = self._seal(pack)
        if full is not None:
            self._submit(full)

    # -- called by the pipeline's owner ---------------------------------------------------

    def flush(self) -> None:
        """Seal open packs, wait until every pack is durable, write the index object."""
        with self._lock:
            sealed = [self._seal(p) for p in self._open.values() if p.entries]
            self._open.clear()
        for item in sealed:
            self._submit(item)
        self._queue.join()  # every uploader is idle: all puts returned (or failed)
        self._raise_if_failed()
        self._write_index()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    # -- internals -----------------------------------------------------------------------

    def _seal(self, pack: _OpenPack) -> SealedPack:
        header = self._cipher.seal(encode_pack_header(pack.entries), AAD_PACK_HEADER)
        pack.parts += (header, PACK_TRAILER.pack(len(header), PACK_MAGIC[:4]))
        hasher = blake3.blake3()
        for part in pack.parts:
            hasher.update(part)
        return hasher.digest(), pack.entries, pack.parts

    def _submit(self, item: SealedPack) -> None:
        """Queue a sealed pack; blocks while ``max_pending`` are pending: bounded memory."""
        self._slots.acquire()
        self._queue.put(item)

    def _upload_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            assert isinstance(item, tuple)
            try:
                self._upload(item)
            except BaseException as exc:  # surfaced to the pipeline on its next call
                with self._lock:
                    if self._error is None:  # the first failure is the one to report
                        self._error = exc
            finally:
                # The pack's bytes are let go before its slot is given back, not when the
                # next one arrives: the slots bound the memory really held.
                del item
                self._slots.release()
                self._queue.task_done()

    def _upload(self, item: SealedPack) -> None:
        if self._error is not None:
            return  # the backup has failed: nothing more is written for it
        pack_id, entries, data = item
        put_new(self._backend, pack_key(pack_id), data)  # no torn leftover
        if self._remember is not None and entries[0].kind == KIND_RECORD:
            # The next backup reads these records back: a local cache keeps the pack now
            # (backends/cache.py), not after a GET then.
            self._remember(pack_key(pack_id), data)
        # Durable now: only from here on may an index object name it.
        self._index.add_pack(pack_id, entries)
        # Claims go once the index answers for them, so they stay as few as the packs in
        # flight, not one per new chunk of the run. A chunk the index still will not let be
        # reused (its first copy is in a pack GC is removing) keeps its claim: it is stored
        # once.
        indexed = [e.chunk_id for e in entries if self._index.claimable(e.chunk_id)]
        with self._lock:
            self._claimed.difference_update(indexed)
            self._uploaded.append((pack_id, entries))
            checkpoint = len(self._uploaded) >= self._index_every
        if checkpoint:
            self._write_index()

    def _write_index(self) -> None:
        with self._lock:
            batch, self._uploaded = self._uploaded, []
        if not batch:
            return
        sealed = self._cipher.seal(encode_index(batch), AAD_INDEX)
        key = index_key(blake3.blake3(sealed).digest())
        put_new(self._backend, key, sealed)
        self._index.absorbed(key, batch)  # the host's index takes them over from memory

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
