"""The Bloom filter in front of the host's chunk index (vault/localindex.py): a file per
generation, mapped by every process of the host.

Most chunks of a full backup are new, and a filter answers "not in the vault" from one
mapped page where LMDB walks a B-tree. Bits are taken straight from the chunk id (a keyed
BLAKE3 hash: already uniform). 16 bits per entry and 3 probes: 0.5 % false positives; capped
at 2**31 bits (256 MiB, 13 bits per entry at 160 million chunks). Only `claimable` trusts a
"no" from it: a filter that missed a chunk (damaged, or a process mapping an older filter)
costs a duplicate copy, never a wrong answer.

The file: a header (magic, log2 of the bit count, the generation's id) and the bits. It is
set by the updater (under the index's update lock) and read by everyone; when the index
outgrows it a larger one is written beside it and swapped in by rename (``grown_filter``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vmvault.vault import indexrows
from vmvault.vault.indexrows import LocalIndexBroken, load_numpy

FILTER_MAGIC = b"VMVBLOOM"
FILTER_HEADER = struct.Struct("<8sI16s")  # magic, log2 of the bit count, generation id
FILTER_MIN_BITS = 23
FILTER_MAX_BITS = 31
FILTER_BITS_PER_ENTRY = 16
FILTER_PROBES = 3


def filter_bits_for(entries: int) -> int:
    bits = FILTER_MIN_BITS
    while bits < FILTER_MAX_BITS and (1 << bits) < entries * FILTER_BITS_PER_ENTRY:
        bits += 1
    return bits


class BloomFilter:
    """A bit array in a mapped file: set by the updater (under the lock), read by everyone."""

    def __init__(self, path: Path, generation: bytes) -> None:
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)
        try:
            magic, self.log2, gen = FILTER_HEADER.unpack_from(self._map)
        except struct.error:
            raise LocalIndexBroken("filter: truncated") from None
        size = FILTER_HEADER.size + (1 << self.log2 >> 3)
        if magic != FILTER_MAGIC or gen != generation or len(self._map) != size:
            self._map.close()
            raise LocalIndexBroken("filter: not this generation's")
        self.mask = (1 << self.log2) - 1
        self._bits: Any = None  # a numpy view of the bits, made by the first bulk add

    @staticmethod
    def create(path: Path, log2: int, generation: bytes) -> None:
        with open(path, "wb") as f:
            f.write(FILTER_HEADER.pack(FILTER_MAGIC, log2, generation))
            f.truncate(FILTER_HEADER.size + (1 << log2 >> 3))  # sparse zeros

    def may_contain(self, chunk_id: bytes) -> bool:
        # Probe i is the id's little-endian 64-bit word i, masked (as ``add`` computes it).
        n = int.from_bytes(chunk_id[: 8 * FILTER_PROBES], "little")
        bits, mask, base = self._map, self.mask, FILTER_HEADER.size
        for shift in range(0, 64 * FILTER_PROBES, 64):
            i = (n >> shift) & mask
            if not bits[base + (i >> 3)] >> (i & 7) & 1:
                return False
        return True

    def add(self, chunk_ids: bytes) -> None:
        """Set the bits of many ids at once (``chunk_ids``: 32 bytes each, end to end)."""
        if not chunk_ids:
            return
        if len(chunk_ids) <= 32 * indexrows.SMALL_WRITE:
            bits, mask, base = self._map, self.mask, FILTER_HEADER.size
            for at in range(0, len(chunk_ids), 32):
                n = int.from_bytes(chunk_ids[at : at + 8 * FILTER_PROBES], "little")
                for shift in range(0, 64 * FILTER_PROBES, 64):
                    i = (n >> shift) & mask
                    bits[base + (i >> 3)] |= 1 << (i & 7)
            return
        np = load_numpy()
        if self._bits is None:
            self._bits = np.frombuffer(self._map, np.uint8, offset=FILTER_HEADER.size)
        words = np.frombuffer(chunk_ids, "<u8").reshape(-1, 4)
        probes = (words[:, :FILTER_PROBES] & np.uint64(self.mask)).ravel()
        np.bitwise_or.at(
            self._bits,
            (probes >> np.uint64(3)).astype(np.intp),
            np.left_shift(1, probes & np.uint64(7)).astype(np.uint8),
        )

    def flush(self) -> None:
        self._map.flush()

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a numpy view still alive: the GC closes it
            self._bits = None
            self._map.close()


def grown_filter(
    path: Path, generation: bytes, entries: int, id_batches: Iterable[bytes]
) -> BloomFilter:
    """A larger filter at ``path`` for ``entries`` ids (``id_batches``: 32 bytes each, end to
    end, as ``add`` takes them), swapped in by rename.

    Processes that mapped the old file keep it; chunks added later are then missing from
    their filter, which costs them a duplicate copy at most (see the module's docstring)."""
    log2 = filter_bits_for(entries * 2)  # room to grow before the next rebuild of the filter
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    BloomFilter.create(tmp, log2, generation)
    fresh = BloomFilter(tmp, generation)
    for ids in id_batches:
        fresh.add(ids)
    fresh.flush()
    os.replace(tmp, path)
    return fresh
