"""One generation of the host's chunk index (vault/localindex.py), opened once per process.

A generation is a directory ``g-<random>/``: data.mdb + lock.mdb (LMDB) and filter.bin (the
Bloom filter, vault/chunkfilter.py). Named databases of a generation:

    meta       format, vault id, ``complete``
    objects    index object key -> the pack numbers it named (u32 each)
    packs      pack number (u32 big-endian) -> pack id;  pack_nos: pack id -> number
    chunks     chunk id -> its first location (VALUE, vault/indexrows.py)
    extra      chunk id -> further locations in other packs (duplicates; rare)
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from vmvault.vault.chunkfilter import BloomFilter
from vmvault.vault.indexrows import LocalIndexBroken
from vmvault.vault.mappedpages import madvise_dontneed, mapping_of, over_budget

log = logging.getLogger("vmvault")

DATA = "data.mdb"
FILTER = "filter.bin"
# Address space only (the file is sparse and grows with use): about 2 billion chunks, 128 TB
# of unique data at 64 KiB, and still room for a few hundred open generations in a process.
MAP_SIZE = 256 << 30
MAX_READERS = 1024


@dataclass
class Generation:
    path: Path
    env: lmdb.Environment
    meta: Any
    objects: Any
    packs: Any
    pack_nos: Any
    chunks: Any
    extra: Any
    generation: bytes
    filter: BloomFilter | None
    users: int = 0
    mapped: tuple[int, int] | None = None  # the data file's mapping in this process

    def trim(self) -> None:
        """Drop this process's page-table entries for the index's data file (a read-only
        shared mapping: nothing is lost, the pages stay in the page cache)."""
        if self.mapped is None:
            self.mapped = mapping_of(self.path / DATA) or (0, 0)
        start, end = self.mapped
        with contextlib.suppress(OSError):  # only the file's length: LMDB reserves far more
            end = min(end, start + (self.path / DATA).stat().st_size)
        if end > start:
            madvise_dontneed(start, end - start)
        # Not the filter: every lookup probes it, so dropping it would cost a fault per probe
        # after each trim, and it is capped (chunkfilter.FILTER_MAX_BITS).

    def trim_if_over_budget(self) -> None:
        if over_budget():
            self.trim()


# LMDB forbids opening one file twice in a process (closing one handle drops the other's
# locks): every ChunkIndex of this process shares one handle per generation, counted.
_OPEN: dict[Path, Generation] = {}
_OPEN_LOCK = threading.Lock()
_OPEN_PID = os.getpid()


# Generations let go by the garbage collector (a LocalIndex's finalizer). A finalizer runs
# wherever an allocation triggers a collection, also inside ``_OPEN_LOCK`` on the same
# thread: waiting for the lock there would deadlock, and changing ``_OPEN`` there would
# break the holder's step. So it appends here (``list.append`` is atomic) and releases only
# if it gets the lock at once; otherwise the lock's holder, or its next taker, does.
_LET_GO: list[Generation] = []


def open_generation(path: Path, *, create: bool = False) -> Generation:
    global _OPEN_PID
    with _OPEN_LOCK:
        if os.getpid() != _OPEN_PID:  # a forked child must not use its parent's handles
            _OPEN.clear()
            _LET_GO.clear()
            _OPEN_PID = os.getpid()
        _close_let_go()  # before a load: LMDB opens a file once per process
        gen = _OPEN.get(path)
        if gen is None:
            gen = _load_generation(path, create=create)
            _OPEN[path] = gen
        gen.users += 1
    return gen


def release_generation(gen: Generation) -> None:
    _LET_GO.append(gen)
    with _OPEN_LOCK:
        _close_let_go()


def release_generation_later(gen: Generation) -> None:
    """What a finalizer calls: never waits for the lock (see ``_LET_GO``). Released now if
    the lock is free, else by whoever holds it or takes it next."""
    _LET_GO.append(gen)
    if _OPEN_LOCK.acquire(blocking=False):
        try:
            _close_let_go()
        finally:
            _OPEN_LOCK.release()


def _close_let_go() -> None:
    """With ``_OPEN_LOCK`` held: count the let-go users off, and close the generations
    nobody uses any more."""
    while _LET_GO:
        gen = _LET_GO.pop()
        gen.users -= 1
        if gen.users <= 0 and _OPEN.get(gen.path) is gen:
            del _OPEN[gen.path]
            if gen.filter is not None:
                gen.filter.close()
            gen.env.close()


def _load_generation(path: Path, *, create: bool) -> Generation:
    if not create and not (path / DATA).is_file():
        raise LocalIndexBroken(f"{path.name}: no data file")
    try:
        env = lmdb.open(
            str(path),
            map_size=MAP_SIZE,
            max_dbs=8,
            max_readers=MAX_READERS,
            readahead=False,  # lookups are random: reading ahead only evicts useful pages
            create=create,
            mode=0o600,
        )
        dbs = {
            name: env.open_db(name.encode(), dupsort=name == "extra", create=create)
            for name in ("meta", "objects", "packs", "pack_nos", "chunks", "extra")
        }
        with env.begin(db=dbs["meta"]) as txn:
            generation = txn.get(b"generation") or b""
    except lmdb.Error as exc:
        raise LocalIndexBroken(f"{path.name}: {exc}") from None
    gen = Generation(
        path,
        env,
        meta=dbs["meta"],
        objects=dbs["objects"],
        packs=dbs["packs"],
        pack_nos=dbs["pack_nos"],
        chunks=dbs["chunks"],
        extra=dbs["extra"],
        generation=generation,
        filter=None,
    )
    if not create:
        try:
            gen.filter = BloomFilter(path / FILTER, generation)
        except (OSError, ValueError, LocalIndexBroken) as exc:
            log.debug("chunk index %s: no usable filter (%s)", path, exc)
    return gen
