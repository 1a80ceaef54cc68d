"""The lookups of the host's chunk index (vault/localindex.py): a chunk's locations, the
pack table, counts and a full walk, each in an LMDB read transaction of the generation in
use; the hot path (``first_location``) reuses its thread's transaction for a short while.

A part of ``LocalIndex``, which mixes it in and provides the attributes declared here; the
opening, absorbing and rebuilding stay there.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import lmdb

from vmvault.vault.indexgeneration import Generation
from vmvault.vault.indexrows import PACK_NO, VALUE, LocalIndexBroken, decode_value
from vmvault.vault.indexwrite import TRIM_EVERY

_T = TypeVar("_T")

# Lookups reuse their thread's read transaction (beginning one per lookup costs 3-4 times the
# lookup itself) for at most this long: a reader pins the snapshot it sees, and pages freed
# after it cannot be reused by writers until it ends.
READER_AGE = 0.5


def _guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    """LMDB's errors on a read (a damaged page, a file cut short) as LocalIndexBroken."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return method(*args, **kwargs)
        except lmdb.Error as exc:
            raise LocalIndexBroken(str(exc)) from None

    return wrapper


class IndexReads:
    _gen: Generation | None
    _lookups: int
    # Each thread's read transaction of the chunks table (thread id -> (txn, generation,
    # epoch, when)); the epoch moves when this process writes, so its own writes are seen.
    _readers: dict[int, tuple[lmdb.Transaction, Generation, int, float]]
    _epoch: int

    def _current(self) -> Generation:
        if self._gen is None:
            raise LocalIndexBroken("not opened")
        return self._gen

    def may_contain(self, chunk_id: bytes) -> bool:
        f = self._gen.filter if self._gen is not None else None
        self._counted()
        return f is None or f.may_contain(chunk_id)

    def _reader(self, gen: Generation) -> lmdb.Transaction:
        """This thread's read transaction of the chunks table (renewed: see READER_AGE)."""
        me = threading.get_ident()
        now = time.monotonic()
        held = self._readers.get(me)
        if held is not None:
            txn, its_gen, epoch, since = held
            if its_gen is gen and epoch == self._epoch and now - since < READER_AGE:
                return txn
            with contextlib.suppress(lmdb.Error):
                txn.abort()
        txn = gen.env.begin(db=gen.chunks)
        self._readers[me] = (txn, gen, self._epoch, now)
        return txn

    def _end_readers(self) -> None:
        """Abort every thread's read transaction (the index is let go, or written)."""
        readers = list(self._readers.values())
        self._readers.clear()  # in place: the finalizer holds this dict
        for txn, *_ in readers:
            with contextlib.suppress(lmdb.Error):
                txn.abort()

    def _counted(self) -> None:
        self._lookups += 1
        if self._lookups >= TRIM_EVERY:
            self._lookups = 0
            if self._gen is not None:
                self._gen.trim_if_over_budget()

    def locations(self, chunk_id: bytes) -> list[tuple[int, int, int, int, int, int]]:
        """The chunk's locations, the first indexed first (usually one, or none)."""
        gen = self._current()
        try:
            with gen.env.begin() as txn:
                first = txn.get(chunk_id, db=gen.chunks)
                if first is None:
                    return []
                out = [decode_value(chunk_id, first)]
                cursor = txn.cursor(db=gen.extra)
                if cursor.set_key(chunk_id):
                    out += [decode_value(chunk_id, v) for v in cursor.iternext_dup()]
                return out
        except lmdb.Error as exc:
            raise LocalIndexBroken(str(exc)) from None

    def first_location(self, chunk_id: bytes) -> tuple[int, int, int, int, int, int] | None:
        """The chunk's first location: the hot path of every lookup, kept flat."""
        gen = self._gen
        if gen is None:
            raise LocalIndexBroken("not opened")
        self._counted()
        try:
            value = self._reader(gen).get(chunk_id)
        except lmdb.Error as exc:
            raise LocalIndexBroken(str(exc)) from None
        if value is None:
            return None
        fields = VALUE.unpack(value) if len(value) == VALUE.size else None
        if fields is None or zlib.crc32(chunk_id + value[:-4]) != fields[6]:
            raise LocalIndexBroken("a location fails its checksum")
        return fields[:6]

    @_guarded
    def pack_id(self, pack_no: int) -> bytes:
        gen = self._current()
        with gen.env.begin(db=gen.packs) as txn:
            pack_id = txn.get(PACK_NO.pack(pack_no))
        if pack_id is None or len(pack_id) != 32:
            raise LocalIndexBroken(f"pack number {pack_no} is not in the pack table")
        return bytes(pack_id)

    @_guarded
    def pack_no(self, pack_id: bytes) -> int | None:
        gen = self._current()
        with gen.env.begin(db=gen.pack_nos) as txn:
            value = txn.get(pack_id)
        return None if value is None else int(PACK_NO.unpack(value)[0])

    @_guarded
    def pack_nos(self, pack_ids: Iterable[bytes]) -> dict[bytes, int]:
        """Numbers of those of ``pack_ids`` the index names (one transaction for all)."""
        gen = self._current()
        out = {}
        with gen.env.begin(db=gen.pack_nos) as txn:
            for pack_id in pack_ids:
                value = txn.get(pack_id)
                if value is not None:
                    out[pack_id] = int(PACK_NO.unpack(value)[0])
        return out

    def first_packs(self, count: int) -> Iterator[bytes]:
        """The ids of packs numbered below ``count`` (number order)."""
        gen = self._current()
        try:
            with gen.env.begin(db=gen.packs) as txn:
                for i, pack_id in enumerate(txn.cursor().iternext(keys=False)):
                    if i >= count:
                        break
                    yield bytes(pack_id)
        except lmdb.Error as exc:
            raise LocalIndexBroken(str(exc)) from None

    def named_packs(self) -> Iterator[tuple[bytes, int]]:
        """Every pack id the index names, with its number (pack id order)."""
        gen = self._current()
        try:
            with gen.env.begin(db=gen.pack_nos) as txn:
                for pack_id, value in txn.cursor().iternext():
                    yield bytes(pack_id), int(PACK_NO.unpack(value)[0])
        except (lmdb.Error, struct.error) as exc:
            raise LocalIndexBroken(str(exc)) from None

    @_guarded
    def pack_count(self) -> int:
        gen = self._current()
        with gen.env.begin() as txn:
            return int(txn.stat(gen.packs)["entries"])

    @_guarded
    def __len__(self) -> int:
        gen = self._current()
        with gen.env.begin() as txn:
            return int(txn.stat(gen.chunks)["entries"])

    def entries(self) -> Iterator[tuple[bytes, list[tuple[int, int, int, int, int, int]]]]:
        """Every chunk with its locations, in chunk id order (one snapshot)."""
        gen = self._current()
        try:
            with gen.env.begin() as txn:
                extra = txn.cursor(db=gen.extra)
                for key, value in txn.cursor(db=gen.chunks).iternext():
                    cid = bytes(key)
                    locs = [decode_value(cid, value)]
                    if extra.set_key(cid):
                        locs += [decode_value(cid, v) for v in extra.iternext_dup()]
                    yield cid, locs
        except lmdb.Error as exc:
            raise LocalIndexBroken(str(exc)) from None
