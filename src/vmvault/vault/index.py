"""The in-memory chunk index: chunk id -> where its sealed blob lives.

Loaded from the vault's index objects when a vault is opened. Memory: one dict entry per
unique stored chunk, about 200 bytes each (about 3 MiB per GiB of unique data at 64 KiB
chunks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vmvault.vault.format import PackEntry


@dataclass(frozen=True, slots=True)
class Location:
    pack_id: bytes
    kind: int
    offset: int  # of the sealed blob in the pack
    length: int  # of the sealed blob
    start: int  # of the chunk in the blob's plaintext
    raw_length: int


class ChunkIndex:
    def __init__(self) -> None:
        self._entries: dict[bytes, Location] = {}
        self._packs: dict[bytes, int] = {}  # pack id -> number of entries
        self._excluded: frozenset[bytes] = frozenset()
        self._missing: set[bytes] = set()  # indexed, but the backend does not have them
        self._lock = threading.Lock()

    def add_pack(
        self, pack_id: bytes, entries: Iterable[PackEntry], *, present: bool = True
    ) -> None:
        """Index a pack's entries; ``present=False`` for a pack the backend lacks.

        The first location wins: a chunk written twice (two concurrent backups) is valid in
        either pack; GC removes the unreferenced copy later. A location in a missing pack
        is only a placeholder: any location in a present pack replaces it, so a chunk a
        backup stored again after the loss is found where it now lives.
        """
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

    def exclude_packs(self, packs: Iterable[bytes]) -> None:
        """Packs that garbage collection is about to remove: readable, but not to be reused."""
        self._excluded = frozenset(packs)

    def claimable(self, chunk_id: bytes) -> bool:
        """Whether a backup may reference this chunk instead of storing it again."""
        loc = self._entries.get(chunk_id)
        return (
            loc is not None
            and loc.pack_id not in self._excluded
            and loc.pack_id not in self._missing
        )

    def available(self, chunk_id: bytes) -> bool:
        """Whether the chunk lives in a pack the backend has (a parent's unchanged chunk may
        be referenced again only then)."""
        loc = self._entries.get(chunk_id)
        return loc is not None and loc.pack_id not in self._missing

    def missing_packs(self) -> list[bytes]:
        """Packs an index object names that the backend did not list: lost.

        Not those a garbage collection announced: an interrupted sweep deletes them only
        after their live blobs were copied, and the next collection drops them from the
        index."""
        return sorted(self._missing - self._excluded)

    def get(self, chunk_id: bytes) -> Location | None:
        return self._entries.get(chunk_id)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def has_pack(self, pack_id: bytes) -> bool:
        return pack_id in self._packs

    def packs(self) -> list[bytes]:
        return list(self._packs)

    def items(self) -> Iterator[tuple[bytes, Location]]:
        return iter(list(self._entries.items()))
