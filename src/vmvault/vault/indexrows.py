"""The byte layouts of the host's chunk index (vault/localindex.py), and index objects as numpy
records.

A location is 25 bytes (pack number, kind, offset, length, start, raw length, CRC-32 of the
key and those fields): a value damaged on disk is detected and the generation dropped, not
followed to a wrong offset.

Index objects read from the vault come as numpy records (``decode_index_arrays``), and large
writes build their locations column-wise (``encode_locations``): no Python object per entry.
numpy is imported only for those (see SMALL_WRITE).

``LocalIndexBroken`` lives here, in the lowest of the index's modules: each of them raises it.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from vmvault.errors import CorruptObject
from vmvault.vault.format import INDEX_ENTRY, INDEX_PACK, PackEntry, index_plaintext

VALUE = struct.Struct("<IBIIIII")  # pack no, kind, offset, length, start, raw length, crc32
PACK_NO = struct.Struct(">I")  # big-endian: the packs table iterates in number order

# Writes of up to this many entries (a writer's own index object: 64 packs of 256 chunks)
# take a plain Python path; larger ones (a first open, a rebuild) go column-wise with numpy,
# imported only then: a daily backup that finds nothing new to read never loads it. The
# chunks table's writer and the filter's read it through the module (``indexrows.SMALL_WRITE``)
# so that both follow the one setting.
SMALL_WRITE = 1 << 16

# An index object as (pack id, entries) with entries as numpy records or PackEntry objects.
IndexArrays = list[tuple[bytes, Any]]


class LocalIndexBroken(Exception):
    """The local file cannot be trusted (unreadable, damaged, another vault's): rebuilt."""


@functools.cache
def load_numpy() -> Any:
    import numpy  # late on purpose: see SMALL_WRITE

    return numpy


@functools.cache
def _dtypes() -> tuple[Any, Any]:
    """The index entry and location layouts as numpy records (the same bytes as INDEX_ENTRY
    and VALUE)."""
    np = load_numpy()
    u4 = "<u4"
    index = np.dtype(
        [("id", "V32"), ("kind", "u1"), ("offset", u4), ("length", u4), ("start", u4), ("raw", u4)]
    )
    value = np.dtype(
        [
            ("pack", u4),
            ("kind", "u1"),
            ("offset", u4),
            ("length", u4),
            ("start", u4),
            ("raw", u4),
            ("crc", u4),
        ]
    )
    assert index.itemsize == INDEX_ENTRY.size and value.itemsize == VALUE.size
    return index, value


def encode_value(chunk_id: bytes, pack_no: int, e: PackEntry) -> bytes:
    body = VALUE.pack(pack_no, e.kind, e.offset, e.length, e.start, e.raw_length, 0)[:-4]
    return body + struct.pack("<I", zlib.crc32(chunk_id + body))


def decode_value(chunk_id: bytes, value: bytes) -> tuple[int, int, int, int, int, int]:
    if len(value) != VALUE.size:
        raise LocalIndexBroken("a location of the wrong size")
    fields = VALUE.unpack(value)
    if zlib.crc32(chunk_id + value[:-4]) != fields[6]:
        raise LocalIndexBroken("a location fails its checksum")
    return fields[:6]


def decode_index_arrays(blob: bytes, what: str) -> IndexArrays:
    """An index object (decrypted) as numpy records per pack: format.decode_index without a
    Python object per entry."""
    plain = index_plaintext(blob, what)
    out: IndexArrays = []
    pos = 1
    while pos < len(plain):
        if pos + INDEX_PACK.size > len(plain):
            raise CorruptObject(f"{what}: index is truncated")
        pack_id, count = INDEX_PACK.unpack_from(plain, pos)
        pos += INDEX_PACK.size
        end = pos + count * INDEX_ENTRY.size
        if end > len(plain):
            raise CorruptObject(f"{what}: index is truncated")
        out.append((pack_id, load_numpy().frombuffer(plain, _dtypes()[0], count, pos)))
        pos = end
    return out


def as_arrays(packs: Sequence[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
    """Packs given as PackEntry lists (what a writer has in hand) as numpy records."""
    np = load_numpy()
    out = []
    for pack_id, entries in packs:
        if not isinstance(entries, np.ndarray):
            rows = [
                (e.chunk_id, e.kind, e.offset, e.length, e.start, e.raw_length) for e in entries
            ]
            entries = np.array(rows, _dtypes()[0])
        out.append((pack_id, entries))
    return out


def encode_locations(entries: Any, numbers: Any) -> tuple[Any, Any]:
    """Index entries (numpy records) and their pack numbers as ids (contiguous ``V32``) and
    locations (``VALUE`` records, CRC included)."""
    np = load_numpy()
    n = len(entries)
    ids = np.ascontiguousarray(entries["id"])
    values = np.empty(n, _dtypes()[1])
    values["pack"] = numbers
    for name in ("kind", "offset", "length", "start", "raw"):
        values[name] = entries[name]
    # CRC-32 of id + fields, as first_location checks it: one C call per entry.
    both = np.concatenate(
        [ids.view(np.uint8).reshape(n, 32), values.view(np.uint8).reshape(n, VALUE.size)[:, :-4]],
        axis=1,
    ).tobytes()
    width = 32 + VALUE.size - 4
    crc32 = zlib.crc32
    values["crc"] = np.fromiter(
        (crc32(both[i : i + width]) for i in range(0, n * width, width)), np.uint32, n
    )
    return ids, values
