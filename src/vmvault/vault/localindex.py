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
the lookups (vault/indexreads.py), the writes (vault/indexwrite.py), the bytes of a
location and index objects as numpy records (vault/indexrows.py), the Bloom
filter (vault/chunkfilter.py), the budget of mapped pages (vault/mappedpages.py).

Memory: the file is mapped, not read; a process's own memory does not grow with the vault
(the pages it touches are the kernel's page cache, shared by every process of the host, and
past a budget of them a process lets the data file's go: see vault/mappedpages.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb

if TYPE_CHECKING:
    pass

from vmvault.backends.cache_files import CHUNK_INDEX_DIR, cache_root
from vmvault.errors import CorruptObject, ObjectMissing, VmvaultError
from vmvault.vault.chunkfilter import BloomFilter, filter_bits_for
from vmvault.vault.format import PackEntry
from vmvault.vault.indexgeneration import (
    FILTER,
    Generation,
    open_generation,
    release_generation,
    release_generation_later,
)
from vmvault.vault.indexreads import IndexReads
from vmvault.vault.indexrows import (
    IndexArrays,
    LocalIndexBroken,
)
from vmvault.vault.indexwrite import BATCH, bulk_load, write_objects

log = logging.getLogger("vmvault")
_T = TypeVar("_T")

SUBDIR = CHUNK_INDEX_DIR
SCHEMA = b"vmvault-chunk-index-1"
CURRENT = "CURRENT"


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


class LocalIndex(IndexReads):
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
            write_objects(gen, [(k, [(p, list(e)) for p, e in packs]) for k, packs in objects])
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
                write_objects(gen, batch)
                batch, size = [], 0
        if batch:
            write_objects(gen, batch)

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
            self.absorbed_now += bulk_load(gen, listed, read_object, problems)
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
