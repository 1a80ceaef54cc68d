"""The write side of the host's chunk index (vault/localindex.py): index objects absorbed
into a generation, incrementally (``write_objects``: one write transaction, numpy columns
for large batches, the filter grown when it fills) or all at once into an empty one
(``bulk_load``: an external sort by the ids' first byte, appended in B-tree order)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lmdb

if TYPE_CHECKING:
    import numpy as np

from vmvault.errors import CorruptObject, ObjectMissing, VmvaultError
from vmvault.vault import indexrows
from vmvault.vault.chunkfilter import BloomFilter, filter_bits_for, grown_filter
from vmvault.vault.indexgeneration import FILTER, Generation
from vmvault.vault.indexrows import (
    PACK_NO,
    VALUE,
    IndexArrays,
    LocalIndexBroken,
    as_arrays,
    encode_locations,
    encode_value,
    load_numpy,
)

# Entries per write transaction while absorbing: bounds the dirty pages LMDB keeps in memory.
BATCH = 1 << 20
# How often a process checks its mapped pages against the budget (vault/mappedpages.py):
# every TRIM_EVERY lookups, and between slices of TRIM_EVERY entries of a write.
TRIM_EVERY = 1 << 11


def write_objects(gen: Generation, objects: Sequence[tuple[str, IndexArrays]]) -> None:
    """Absorb index objects in one write transaction (called under the update lock).

    In listing order the first location of a chunk wins; later locations in *other* packs go
    to ``extra`` (a copy in a lost pack is then replaced by one that is present). A pack the
    index already names adds nothing: a pack is immutable, so its entries are the same in
    every index object that names it. The filter's bits are set before the commit: a crash
    in between leaves bits for absent chunks (a lookup more), never a missing bit.
    Column-wise (numpy): a first open absorbs every chunk of the vault.
    """
    try:
        with gen.env.begin(write=True) as txn:
            next_no = int(txn.stat(gen.packs)["entries"])
            arrays: list[Any] = []  # entries of each new pack: PackEntry lists or numpy records
            numbers_of: list[int] = []
            for key, packs in objects:
                if txn.get(key.encode(), db=gen.objects) is not None:
                    continue
                numbers = []
                for pack_id, entries in packs:
                    known = txn.get(pack_id, db=gen.pack_nos)
                    if known is not None:
                        numbers.append(int(PACK_NO.unpack(known)[0]))
                        continue
                    no = next_no
                    next_no += 1
                    txn.put(PACK_NO.pack(no), pack_id, db=gen.packs)
                    txn.put(pack_id, PACK_NO.pack(no), db=gen.pack_nos)
                    numbers.append(no)
                    arrays.append(entries)
                    numbers_of.append(no)
                txn.put(key.encode(), b"".join(PACK_NO.pack(n) for n in numbers), db=gen.objects)
            total = sum(len(e) for e in arrays)
            if (
                total
                and total <= indexrows.SMALL_WRITE
                and all(isinstance(e, list) for e in arrays)
            ):
                rows = [
                    (e.chunk_id, encode_value(e.chunk_id, no, e))
                    for entries, no in zip(arrays, numbers_of, strict=True)
                    for e in entries
                ]
                rows.sort(key=lambda r: r[0])  # stable: equal ids keep their listing order
                _put_items(gen, txn, rows, b"".join(r[0] for r in rows))
            elif total:
                np = load_numpy()
                arrays = [a for _, a in as_arrays([(b"", e) for e in arrays])]
                numbers = [
                    np.full(len(a), no, np.uint32) for a, no in zip(arrays, numbers_of, strict=True)
                ]
                _put_entries(gen, txn, np.concatenate(arrays), np.concatenate(numbers))
    except lmdb.Error as exc:
        raise LocalIndexBroken(str(exc)) from None


def _put_entries(
    gen: Generation,
    txn: lmdb.Transaction,
    entries: np.ndarray[Any, Any],
    numbers: np.ndarray[Any, Any],
) -> None:
    np = load_numpy()
    ids, values = encode_locations(entries, numbers)
    order = np.argsort(ids.view("S32"), kind="stable")  # B-tree order; listing order on ties
    keys = ids[order].tobytes()
    packed = values[order].tobytes()
    size = VALUE.size
    items = [
        (keys[i * 32 : i * 32 + 32], packed[i * size : i * size + size]) for i in range(len(ids))
    ]
    _put_items(gen, txn, items, keys)


def _put_items(
    gen: Generation, txn: lmdb.Transaction, items: list[tuple[bytes, bytes]], keys: bytes
) -> None:
    """Put (chunk id, location) pairs in id order; ``keys``: their ids end to end."""
    # In slices, with the mapped-pages budget checked between them: each insert reads a
    # random leaf through the map (LMDB's dirty copies are apart: the map is read-only).
    cursor = txn.cursor(db=gen.chunks)
    added = 0
    for lo in range(0, len(items), TRIM_EVERY):
        added += cursor.putmulti(items[lo : lo + TRIM_EVERY], overwrite=False)[1]
        gen.trim_if_over_budget()
    if added < len(items):
        # Some ids were indexed already (a copy in another pack, or twice in this batch): a
        # copy in another pack is kept as a further location.
        for key, value in items:
            current = txn.get(key, db=gen.chunks)
            if current is not None and current != value and current[:4] != value[:4]:
                txn.put(key, value, db=gen.extra, dupdata=False)
    if gen.filter is not None:
        entries_now = int(txn.stat(gen.chunks)["entries"])
        if filter_bits_for(entries_now) > gen.filter.log2:
            _grow_filter(gen, txn)
        else:
            gen.filter.add(keys)
            gen.filter.flush()


def _grow_filter(gen: Generation, txn: lmdb.Transaction) -> None:
    """A larger filter from every key in the transaction's view (chunkfilter.grown_filter)."""
    entries = int(txn.stat(gen.chunks)["entries"])
    batches = _key_batches(txn, gen.chunks)
    # The old map is closed when the last thread reading it lets it go.
    gen.filter = grown_filter(gen.path / FILTER, gen.generation, entries, batches)


def _key_batches(txn: lmdb.Transaction, db: Any) -> Iterator[bytes]:
    """The keys of ``db`` in the transaction's view, BATCH at a time, end to end."""
    keys: list[bytes] = []
    for key in txn.cursor(db=db).iternext(values=False):
        keys.append(bytes(key))
        if len(keys) >= BATCH:
            yield b"".join(keys)
            keys = []
    yield b"".join(keys)


def bulk_load(
    gen: Generation,
    listed: Sequence[str],
    read_object: Callable[[str], Sequence[tuple[bytes, Any]]],
    problems: dict[str, VmvaultError],
) -> int:
    """Every listed index object into an empty generation, by an external sort; returns
    how many it absorbed.

    Inserting ids in the order index objects list them would touch a random page of
    the B-tree per chunk: each transaction rewrites most of the file (measured: 343 s
    and 271 bytes a chunk at 20 million, and LMDB's dirty pages in the process's own
    memory). Instead the locations go to 256 bucket files by the id's first byte (in
    listing order), then each bucket is sorted in memory (stable: the first location
    of an id stays first) and appended at the end of the B-tree: sequential writes, full
    pages, memory one bucket (1/256 of the index).
    """
    if not listed:  # a new vault: nothing to sort, and no numpy to load for it
        return 0
    absorbed = 0
    np = load_numpy()
    record = np.dtype([("id", "V32"), ("value", f"V{VALUE.size}")])
    work = gen.path / "sort"
    work.mkdir(mode=0o700)
    buckets = [open(work / f"{b:02x}", "wb") for b in range(256)]  # noqa: SIM115
    try:
        next_no = total = 0
        for key in listed:
            try:
                packs = read_object(key)
            except (CorruptObject, ObjectMissing) as exc:
                problems[key] = exc
                continue
            absorbed += 1
            with gen.env.begin(write=True) as txn:
                numbers, arrays, numbers_of = [], [], []
                for pack_id, entries in as_arrays(packs):
                    value = txn.get(pack_id, db=gen.pack_nos)
                    if value is not None:  # named by an earlier object: the same entries
                        numbers.append(int(PACK_NO.unpack(value)[0]))
                        continue
                    no, next_no = next_no, next_no + 1
                    txn.put(PACK_NO.pack(no), pack_id, db=gen.packs)
                    txn.put(pack_id, PACK_NO.pack(no), db=gen.pack_nos)
                    numbers.append(no)
                    arrays.append(entries)
                    numbers_of.append(np.full(len(entries), no, np.uint32))
                txn.put(key.encode(), b"".join(PACK_NO.pack(n) for n in numbers), db=gen.objects)
            if not arrays:
                continue
            ids, values = encode_locations(np.concatenate(arrays), np.concatenate(numbers_of))
            rows = np.empty(len(ids), record)
            rows["id"] = ids
            rows["value"] = values.view(f"V{VALUE.size}")
            first = ids.view(np.uint8).reshape(-1, 32)[:, 0]
            order = np.argsort(first, kind="stable")
            bounds = np.searchsorted(first[order], np.arange(257))
            rows = rows[order]
            for b in range(256):
                if bounds[b] < bounds[b + 1]:
                    buckets[b].write(rows[bounds[b] : bounds[b + 1]].tobytes())
            total += len(ids)
        for f in buckets:
            f.close()
        BloomFilter.create(gen.path / FILTER, filter_bits_for(total * 2), gen.generation)
        gen.filter = BloomFilter(gen.path / FILTER, gen.generation)
        for b in range(256):
            rows = np.fromfile(work / f"{b:02x}", record)
            (work / f"{b:02x}").unlink()
            if len(rows):
                _append_bucket(gen, rows)
        gen.filter.flush()
    finally:
        for f in buckets:
            f.close()
        shutil.rmtree(work, ignore_errors=True)
    return absorbed


def _append_bucket(gen: Generation, rows: Any) -> None:
    """One bucket's locations, sorted, appended to the B-tree (ids above every id there)."""
    np = load_numpy()
    rows = rows[np.argsort(rows["id"].view("S32"), kind="stable")]
    ids = np.ascontiguousarray(rows["id"]).view("S32")
    first = np.ones(len(rows), bool)
    first[1:] = ids[1:] != ids[:-1]  # a later location of an id (another pack's copy)
    keys = np.ascontiguousarray(rows["id"][first]).tobytes()
    values = np.ascontiguousarray(rows["value"][first]).tobytes()
    size = VALUE.size
    items = [
        (keys[i * 32 : i * 32 + 32], values[i * size : i * size + size])
        for i in range(len(keys) // 32)
    ]
    with gen.env.begin(write=True) as txn:
        txn.cursor(db=gen.chunks).putmulti(items, append=True)
        for i in np.flatnonzero(~first):
            key, value = bytes(rows["id"][i]), bytes(rows["value"][i])
            current = txn.get(key, db=gen.chunks)
            if current is not None and current[:4] != value[:4]:
                txn.put(key, value, db=gen.extra, dupdata=False)
    assert gen.filter is not None
    gen.filter.add(keys)
    gen.trim_if_over_budget()
