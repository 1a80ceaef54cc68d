"""The host's persistent chunk index of one vault: an LMDB file under the cache directory.

A cache of the vault's index objects, never a source of truth: it holds what the index
objects it has *absorbed* (recorded by key) name, so a process opening the vault reads only
the index objects it has not absorbed yet. When an absorbed index object is gone from the
vault (garbage collection rewrote the index, `vault reindex`), entries may name packs that no
longer exist: the whole file is rebuilt from the index objects the vault lists, so it never
names a chunk they do not.

Layout, under ``<cache root>/<vault id>/chunk-index/`` (mode 0700):

    lock          flock(2) held while updating (absorb, rebuild): one updater per host
    CURRENT       the name of the generation in use, replaced by rename
    g-<random>/   a generation: data.mdb + lock.mdb (LMDB), filter.bin (Bloom filter)

A rebuild writes a new generation and switches CURRENT to it only once it is complete, so a
kill -9 mid-rebuild leaves the old generation (or none) in use, never a half-built one.
Processes still reading the old generation keep their mapping of it; their next open moves
to the new one. LMDB gives readers a consistent snapshot while another process appends.

The parts: a generation's databases and its handle in this process (vault/indexgeneration.py),
the bytes of a location and index objects as numpy records (vault/indexrows.py), the Bloom
filter (vault/chunkfilter.py), the budget of mapped pages (vault/mappedpages.py).

Memory: the file is mapped, not read; a process's own memory does not grow with the vault
(the pages it touches are the kernel's page cache, shared by every process of the host, and
past a budget of them a process lets the data file's go: see vault/mappedpages.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import secrets
import shutil
import struct
import tempfile
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb

if TYPE_CHECKING:
    import numpy as np

from vmvault.backends.cache_files import CHUNK_INDEX_DIR, cache_root
from vmvault.errors import CorruptObject, ObjectMissing, VmvaultError
from vmvault.vault import indexrows
from vmvault.vault.chunkfilter import BloomFilter, filter_bits_for, grown_filter
from vmvault.vault.format import PackEntry
from vmvault.vault.indexgeneration import (
    FILTER,
    Generation,
    open_generation,
    release_generation,
    release_generation_later,
)
from vmvault.vault.indexrows import (
    PACK_NO,
    VALUE,
    IndexArrays,
    LocalIndexBroken,
    as_arrays,
    decode_value,
    encode_locations,
    encode_value,
    load_numpy,
)

log = logging.getLogger("vmvault")
_T = TypeVar("_T")

SUBDIR = CHUNK_INDEX_DIR
SCHEMA = b"vmvault-chunk-index-1"
CURRENT = "CURRENT"
# Entries per write transaction while absorbing: bounds the dirty pages LMDB keeps in memory.
BATCH = 1 << 20

# How often a process checks its mapped pages against the budget (vault/mappedpages.py):
# every TRIM_EVERY lookups, and between slices of TRIM_EVERY entries of a write.
TRIM_EVERY = 1 << 11
# Lookups reuse their thread's read transaction (beginning one per lookup costs 3-4 times the
# lookup itself) for at most this long: a reader pins the snapshot it sees, and pages freed
# after it cannot be reused by writers until it ends.
READER_AGE = 0.5


class LocalIndexDamaged(VmvaultError):
    """The local index failed a check in the middle of a job: the job stops (it cannot tell
    where a chunk lives) and the next open rebuilds the index from the vault."""

    code = "local_index_damaged"
    transient = True  # a queued job's retry opens the vault again: the index is rebuilt


def index_dir(vault_id: str) -> Path:
    return cache_root() / vault_id / SUBDIR


def _private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents as 0700: chunk ids and sizes are the vault's
    metadata, readable by its owner only."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)


# -- the index of one vault ------------------------------------------------------------------


def _guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    """LMDB's errors on a read (a damaged page, a file cut short) as LocalIndexBroken."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return method(*args, **kwargs)
        except lmdb.Error as exc:
            raise LocalIndexBroken(str(exc)) from None

    return wrapper


class LocalIndex:
    """A vault's persistent chunk index on this host (see the module's docstring)."""

    def __init__(self, directory: Path, vault_id: str) -> None:
        self.directory = directory
        self.vault_id = vault_id
        self._gen: Generation | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.rebuilt = False  # set by sync: the last sync built a new generation
        self.absorbed_now = 0  # index objects the last sync read
        self._lookups = 0  # since the last trim (approximate: threads race on it, harmlessly)
        # Each thread's read transaction of the chunks table (thread id -> (txn, generation,
        # epoch, when)); the epoch moves when this process writes, so its own writes are seen.
        self._readers: dict[int, tuple[lmdb.Transaction, Generation, int, float]] = {}
        self._epoch = 0

    @classmethod
    def for_vault(cls, vault_id: str) -> LocalIndex:
        """The index under the cache directory; a private temporary one if that cannot be
        written (a read-only home): then each open reads every index object, as before."""
        directory = index_dir(vault_id)
        try:
            _private_dirs(directory)
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermissionError(f"{directory} is not writable")
        except OSError as exc:
            fallback = Path(tempfile.mkdtemp(prefix="vmvault-chunk-index-"))
            log.warning("chunk index: %s unusable (%s); using %s", directory, exc, fallback)
            index = cls(fallback, vault_id)
            weakref.finalize(index, shutil.rmtree, fallback, True)
            return index
        return cls(directory, vault_id)

    # -- opening and updating ------------------------------------------------------------

    def sync(
        self,
        listed: Sequence[str],
        read_object: Callable[[str], Sequence[tuple[bytes, Any]]],
    ) -> dict[str, VmvaultError]:
        """Bring the index up to the index objects ``listed``: absorb new ones; rebuild when
        one it absorbed is gone or the file cannot be trusted. Returns the index objects
        that could not be read (not absorbed: tried again at the next open)."""
        self.rebuilt = False
        self.absorbed_now = 0
        wanted = set(listed)
        gen, absorbed = self._try_current()
        if gen is not None and absorbed == wanted:  # the common case: nothing new, no lock
            self._use(gen)
            return {}
        if gen is not None:
            self._release(gen)
        problems: dict[str, VmvaultError] = {}
        with self._update_lock():
            gen, absorbed = self._try_current()  # another process may have updated it
            if gen is None or absorbed is None or not absorbed <= wanted:
                if gen is not None:
                    self._release(gen)
                gen = self._rebuild(listed, read_object, problems)
                self.rebuilt = True
            else:
                todo = [k for k in listed if k not in absorbed]
                try:
                    self._absorb_keys(gen, todo, read_object, problems)
                except BaseException:
                    self._release(gen)
                    raise
        self._use(gen)
        return problems

    def absorb(
        self, objects: Sequence[tuple[str, Sequence[tuple[bytes, Sequence[PackEntry]]]]]
    ) -> bool | None:
        """Record index objects this process has just written (no need to read them back).

        Never waits: a backup's uploader calls this, and another process may hold the lock
        for minutes (a rebuild). None when the lock is busy (try again later); False when
        the index was rebuilt meanwhile (the next open absorbs them from the listing)."""
        gen = self._gen
        if gen is None:
            return False
        with self._update_lock(wait=False) as locked:
            if not locked:
                return None
            if self._read_current_name() != gen.path.name:
                return False
            _write_objects(gen, [(k, [(p, list(e)) for p, e in packs]) for k, packs in objects])
        self._epoch += 1  # every thread's next lookup takes a snapshot that has them
        return True

    def drop(self) -> None:
        """Make the next open rebuild from the vault (this process keeps its mapping).
        Without waiting for the lock: at worst a rebuild finishing meanwhile is redone."""
        gen = self._gen
        with contextlib.suppress(OSError), self._update_lock(wait=False):
            if gen is None or self._read_current_name() == gen.path.name:
                (self.directory / CURRENT).unlink(missing_ok=True)

    def invalidate(self, reason: str) -> LocalIndexDamaged:
        """Stop trusting the current generation (the next open rebuilds it); the error to
        raise to the job that found the damage."""
        self.drop()
        return LocalIndexDamaged(
            f"the local chunk index {self.directory} is damaged ({reason}); "
            "it is rebuilt from the vault's index objects at the next open: run the job again"
        )

    def _absorb_keys(
        self,
        gen: Generation,
        keys: Sequence[str],
        read_object: Callable[[str], Sequence[tuple[bytes, Any]]],
        problems: dict[str, VmvaultError],
    ) -> None:
        batch: list[tuple[str, IndexArrays]] = []
        size = 0
        for key in keys:
            try:
                packs = read_object(key)
            except (CorruptObject, ObjectMissing) as exc:
                problems[key] = exc
                continue
            batch.append((key, list(packs)))
            self.absorbed_now += 1
            size += sum(len(e) for _, e in packs)
            if size >= BATCH:
                _write_objects(gen, batch)
                batch, size = [], 0
        if batch:
            _write_objects(gen, batch)

    def _rebuild(
        self,
        listed: Sequence[str],
        read_object: Callable[[str], Sequence[tuple[bytes, Any]]],
        problems: dict[str, VmvaultError],
    ) -> Generation:
        """A new generation from every listed index object, made current once complete.
        Called under the update lock."""
        for stale in self.directory.glob("g-*"):
            if stale.name != self._read_current_name():
                shutil.rmtree(stale, ignore_errors=True)  # an interrupted build, or replaced
        name = f"g-{secrets.token_hex(8)}"
        path = self.directory / name
        path.mkdir(mode=0o700)
        generation = secrets.token_bytes(16)
        gen = open_generation(path, create=True)
        try:
            BloomFilter.create(path / FILTER, filter_bits_for(0), generation)
            gen.filter = BloomFilter(path / FILTER, generation)
            gen.generation = generation
            with gen.env.begin(write=True) as txn:
                txn.put(b"schema", SCHEMA, db=gen.meta)
                txn.put(b"vault", self.vault_id.encode(), db=gen.meta)
                txn.put(b"generation", generation, db=gen.meta)
            self._bulk_load(gen, listed, read_object, problems)
            with gen.env.begin(write=True) as txn:
                txn.put(b"complete", b"1", db=gen.meta)
            gen.env.sync(True)
            _write_current(self.directory, name)
        except BaseException:
            release_generation(gen)
            shutil.rmtree(path, ignore_errors=True)
            raise
        for old in self.directory.glob("g-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)  # its readers keep their mapping
        return gen

    def _bulk_load(
        self,
        gen: Generation,
        listed: Sequence[str],
        read_object: Callable[[str], Sequence[tuple[bytes, Any]]],
        problems: dict[str, VmvaultError],
    ) -> None:
        """Every listed index object into an empty generation, by an external sort.

        Inserting ids in the order index objects list them would touch a random page of
        the B-tree per chunk: each transaction rewrites most of the file (measured: 343 s
        and 271 bytes a chunk at 20 million, and LMDB's dirty pages in the process's own
        memory). Instead the locations go to 256 bucket files by the id's first byte (in
        listing order), then each bucket is sorted in memory (stable: the first location
        of an id stays first) and appended at the end of the B-tree: sequential writes, full
        pages, memory one bucket (1/256 of the index).
        """
        if not listed:  # a new vault: nothing to sort, and no numpy to load for it
            return
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
                self.absorbed_now += 1
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
                    txn.put(
                        key.encode(), b"".join(PACK_NO.pack(n) for n in numbers), db=gen.objects
                    )
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
                    self._append_bucket(gen, rows)
            gen.filter.flush()
        finally:
            for f in buckets:
                f.close()
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
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

    # -- generations ----------------------------------------------------------------------

    def _read_current_name(self) -> str | None:
        try:
            name = (self.directory / CURRENT).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return name if name.startswith("g-") and "/" not in name else None

    def _try_current(self) -> tuple[Generation | None, set[str] | None]:
        """The current generation (opened, checked) and the index objects it absorbed."""
        name = self._read_current_name()
        if name is None:
            return None, None
        try:
            gen = open_generation(self.directory / name)
        except LocalIndexBroken as exc:
            log.warning("chunk index %s unusable (%s): rebuilding it", self.directory, exc)
            return None, None
        try:
            self._validate(gen)
            return gen, self._absorbed(gen)
        except LocalIndexBroken as exc:
            log.warning("chunk index %s unusable (%s): rebuilding it", self.directory, exc)
            self._release(gen)
            return None, None

    def _validate(self, gen: Generation) -> None:
        try:
            with gen.env.begin(db=gen.meta) as txn:
                schema, vault, complete = (txn.get(k) for k in (b"schema", b"vault", b"complete"))
        except lmdb.Error as exc:
            raise LocalIndexBroken(str(exc)) from None
        if schema != SCHEMA or vault != self.vault_id.encode() or complete != b"1":
            raise LocalIndexBroken("not a complete index of this vault")

    def _absorbed(self, gen: Generation) -> set[str]:
        try:
            with gen.env.begin(db=gen.objects) as txn:
                return {bytes(k).decode() for k in txn.cursor().iternext(values=False)}
        except (lmdb.Error, UnicodeDecodeError) as exc:
            raise LocalIndexBroken(str(exc)) from None

    def _use(self, gen: Generation) -> None:
        if self._gen is not None and self._gen is not gen:
            self._release(self._gen)
        self._gen = gen
        self._epoch += 1  # synced: readers take a fresh snapshot
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _release_readers, self._readers, gen)

    def _release(self, gen: Generation) -> None:
        self._end_readers()
        if self._gen is gen:
            self._gen = None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        release_generation(gen)

    def close(self) -> None:
        if self._gen is not None:
            self._release(self._gen)

    @contextlib.contextmanager
    def _update_lock(self, *, wait: bool = True) -> Iterator[bool]:
        """The host-wide update lock; yields whether it is held (always, when waiting)."""
        _private_dirs(self.directory)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    # -- reading --------------------------------------------------------------------------

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


def _release_readers(
    readers: dict[int, tuple[lmdb.Transaction, Generation, int, float]], gen: Generation
) -> None:
    """A LocalIndex was let go: its threads' read transactions end, then its generation."""
    for txn, *_ in list(readers.values()):
        with contextlib.suppress(lmdb.Error):
            txn.abort()
    readers.clear()
    release_generation_later(gen)  # a finalizer: no lock taken here (see indexgeneration)


def _write_current(directory: Path, name: str) -> None:
    tmp = directory / f".{CURRENT}.{secrets.token_hex(4)}"
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / CURRENT)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_objects(gen: Generation, objects: Sequence[tuple[str, IndexArrays]]) -> None:
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
