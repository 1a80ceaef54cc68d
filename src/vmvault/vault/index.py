"""The chunk index: chunk id -> where its sealed blob lives.

Two layers. The vault's index objects live in the host's persistent index
(vault/localindex.py: an LMDB file under the cache directory, shared by the processes of the
host, updated with only the index objects it has not absorbed yet), so a process's memory does
not grow with the vault. In memory stays what is per run and small: the packs this process
wrote whose index object is not written yet (at most ``index_every`` packs of a PackWriter),
packs indexed in memory only (orphans adopted by a restore), and which packs are lost,
damaged or about to be removed by garbage collection.

Without a persistent index (``ChunkIndex()``) everything is in memory, as it always was:
about 200 bytes per chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from vmvault.vault.format import PackEntry
from vmvault.vault.indexrows import LocalIndexBroken
from vmvault.vault.localindex import LocalIndex, LocalIndexDamaged

# Pack numbers of the persistent index resolved to pack ids, kept per run: a restore reads
# its packs' chunks in runs, so the same few packs come back; bounded all the same.
PACK_ID_CACHE = 1 << 16


class Location(NamedTuple):
    """A chunk's place (a tuple: one is made per lookup of the host's index, and a frozen
    dataclass costs several times more to build)."""

    pack_id: bytes
    kind: int
    offset: int  # of the sealed blob in the pack
    length: int  # of the sealed blob
    start: int  # of the chunk in the blob's plaintext
    raw_length: int


class ChunkIndex:
    def __init__(self, store: LocalIndex | None = None) -> None:
        self._store = store
        # Packs indexed in memory: written by this process and not yet absorbed by the
        # store, or the whole index when there is no store.
        self._entries: dict[bytes, Location] = {}
        self._packs: dict[bytes, int] = {}  # pack id -> number of entries
        self._excluded: frozenset[bytes] = frozenset()
        self._missing: set[bytes] = set()  # indexed, but the backend does not have them
        self._pack_ids: dict[int, bytes] = {}
        # Index objects this process wrote that the store has not taken yet (its lock was
        # busy): their packs stay in memory meanwhile.
        self._unabsorbed: list[tuple[str, Sequence[tuple[bytes, Sequence[PackEntry]]]]] = []
        self._lock = threading.Lock()

    @classmethod
    def opened(
        cls, store: LocalIndex, usable: set[bytes], *, named_before: int | None = None
    ) -> ChunkIndex:
        """The index over a synced store; packs it names that are not ``usable`` (the
        listing lacks them, or a marker names them damaged) are placeholders.

        Only packs numbered below ``named_before`` are judged: those were named before the
        packs were listed; a pack another process indexed since may be newer than the
        listing, and is present (a pack is durable before an index object names it)."""
        index = cls(store)
        limit = store.pack_count() if named_before is None else named_before
        try:
            index._missing = {p for p in store.first_packs(limit) if p not in usable}
        except LocalIndexBroken as exc:
            raise store.invalidate(str(exc)) from None
        return index

    def add_pack(
        self, pack_id: bytes, entries: Iterable[PackEntry], *, present: bool = True
    ) -> None:
        """Index a pack's entries; ``present=False`` for a pack the backend lacks.

        The first location wins: a chunk written twice (two concurrent backups) is valid in
        either pack; GC removes the unreferenced copy later. A location in a missing pack
        is only a placeholder: any location in a present pack replaces it, so a chunk a
        backup stored again after the loss is found where it now lives. A pack the
        persistent index names already adds nothing (a pack's entries never change).
        """
        if present and self._store is not None and self._stored_pack(pack_id):
            return
        with self._lock:
            if not present:
                self._missing.add(pack_id)
            count = 0
            for e in entries:
                current = self._entries.get(e.chunk_id)
                if current is None or (present and current.pack_id in self._missing):
                    self._entries[e.chunk_id] = Location(
                        pack_id, e.kind, e.offset, e.length, e.start, e.raw_length
                    )
                count += 1
            self._packs[pack_id] = count

    def absorbed(self, key: str, packs: Sequence[tuple[bytes, Sequence[PackEntry]]]) -> None:
        """This process wrote index object ``key`` naming ``packs``: the persistent index
        takes them over, and memory lets them go. While another process holds the host's
        update lock they wait here and go with the next one."""
        if self._store is None:
            return
        with self._lock:
            self._unabsorbed.append((key, packs))
            batch = list(self._unabsorbed)
        try:
            taken = self._store.absorb(batch)
        except LocalIndexBroken as exc:
            raise self._store.invalidate(str(exc)) from None
        if taken is None:
            return  # the lock is busy: still in memory, absorbed with the next object
        with self._lock:
            taken_ids = {id(o) for o in batch}
            self._unabsorbed = [o for o in self._unabsorbed if id(o) not in taken_ids]
            if not taken:
                return  # the index was rebuilt meanwhile: they stay in memory for this run
            for _, object_packs in batch:
                for pack_id, entries in object_packs:
                    if self._packs.pop(pack_id, None) is None:
                        continue
                    for e in entries:
                        loc = self._entries.get(e.chunk_id)
                        if loc is not None and loc.pack_id == pack_id:
                            del self._entries[e.chunk_id]

    def exclude_packs(self, packs: Iterable[bytes]) -> None:
        """Packs that garbage collection is about to remove: readable, but not to be reused."""
        self._excluded = frozenset(packs)

    def claimable(self, chunk_id: bytes) -> bool:
        """Whether a backup may reference this chunk instead of storing it again."""
        store = self._store
        if store is not None and chunk_id not in self._entries and not store.may_contain(chunk_id):
            return False  # the common case of a full backup: a new chunk, one filter probe
        loc = self.get(chunk_id)
        return (
            loc is not None
            and loc.pack_id not in self._excluded
            and loc.pack_id not in self._missing
        )

    def available(self, chunk_id: bytes) -> bool:
        """Whether the chunk lives in a pack the backend has (a parent's unchanged chunk may
        be referenced again only then)."""
        loc = self.get(chunk_id)
        return loc is not None and loc.pack_id not in self._missing

    def missing_packs(self) -> list[bytes]:
        """Packs an index object names that the backend did not list: lost.

        Not those a garbage collection announced: an interrupted sweep deletes them only
        after their live blobs were copied, and the next collection drops them from the
        index."""
        return sorted(self._missing - self._excluded)

    def get(self, chunk_id: bytes) -> Location | None:
        store = self._store
        stored = None
        if store is not None:
            try:
                raw = store.first_location(chunk_id)
            except LocalIndexBroken as exc:
                raise store.invalidate(str(exc)) from None
            if raw is not None:
                pack_id = self._pack_ids.get(raw[0])
                if pack_id is None:
                    pack_id = self._pack_id(raw[0])
                if pack_id not in self._missing:
                    return Location(pack_id, *raw[1:])  # the common case: one B-tree lookup
                stored = self._stored(chunk_id)
        mine = self._entries.get(chunk_id)
        if mine is not None and (stored is None or mine.pack_id not in self._missing):
            return mine
        return stored

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, bytes) and self.get(chunk_id) is not None

    def __len__(self) -> int:
        if self._store is None:
            return len(self._entries)
        try:
            stored = len(self._store)
            return stored + sum(1 for c in list(self._entries) if self._stored(c) is None)
        except LocalIndexBroken as exc:
            raise self._store.invalidate(str(exc)) from None

    def has_pack(self, pack_id: bytes) -> bool:
        return pack_id in self._packs or (self._store is not None and self._stored_pack(pack_id))

    def unindexed(self, pack_ids: Iterable[bytes]) -> list[bytes]:
        """Those of ``pack_ids`` no index object names (one lookup pass for many)."""
        wanted = [p for p in pack_ids if p not in self._packs]
        if self._store is None:
            return wanted
        try:
            named = self._store.pack_nos(wanted)
        except LocalIndexBroken as exc:
            raise self._store.invalidate(str(exc)) from None
        return [p for p in wanted if p not in named]

    def packs(self) -> list[bytes]:
        stored = [p for p, _ in self._store.named_packs()] if self._store is not None else []
        return stored + [p for p in self._packs if p not in set(stored)]

    def items(self) -> Iterator[tuple[bytes, Location]]:
        """Every chunk with the location ``get`` gives (the persistent index's snapshot, then
        what is in memory only). A stream: memory does not grow with the vault."""
        if self._store is not None:
            try:
                for chunk_id, locations in self._store.entries():
                    yield chunk_id, self._choose(locations)
            except LocalIndexBroken as exc:
                raise self._store.invalidate(str(exc)) from None
        for chunk_id, loc in list(self._entries.items()):
            if self._store is None or self._stored(chunk_id) is None:
                yield chunk_id, loc

    # -- the persistent layer -------------------------------------------------------------

    def _stored(self, chunk_id: bytes) -> Location | None:
        """The store's location of a chunk: the first one in a present pack, else the first
        (a placeholder in a lost pack)."""
        store = self._store
        assert store is not None
        try:
            first = store.first_location(chunk_id)
            if first is None:
                return None
            loc = self._location(first)
            if loc.pack_id not in self._missing:
                return loc
            return self._choose(store.locations(chunk_id))
        except LocalIndexBroken as exc:
            raise store.invalidate(str(exc)) from None

    def _choose(self, locations: Sequence[tuple[int, int, int, int, int, int]]) -> Location:
        resolved = [self._location(raw) for raw in locations]
        return next((loc for loc in resolved if loc.pack_id not in self._missing), resolved[0])

    def _location(self, raw: tuple[int, int, int, int, int, int]) -> Location:
        pack_id = self._pack_ids.get(raw[0])
        if pack_id is None:
            pack_id = self._pack_id(raw[0])
        return Location(pack_id, *raw[1:])

    def _pack_id(self, pack_no: int) -> bytes:
        assert self._store is not None
        pack_id = self._store.pack_id(pack_no)
        if len(self._pack_ids) >= PACK_ID_CACHE:
            self._pack_ids.clear()
        self._pack_ids[pack_no] = pack_id
        return pack_id

    def _stored_pack(self, pack_id: bytes) -> bool:
        assert self._store is not None
        try:
            return self._store.pack_no(pack_id) is not None
        except LocalIndexBroken as exc:
            raise self._store.invalidate(str(exc)) from None


__all__ = ["ChunkIndex", "LocalIndexDamaged", "Location"]
