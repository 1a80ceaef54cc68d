"""The on-disk format, version 1: every byte layout lives here (see docs/FORMAT.md).

Pure functions from values to bytes and back. Encryption is applied by the callers through
:class:`vmvault.vault.crypto.Cipher`; what is sealed and with which associated data is
documented next to each encoder.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import zstandard

from vmvault.errors import CorruptObject
from vmvault.model.point import RecoveryPoint

FORMAT_NAME = "vmvault-vault"
FORMAT_VERSION = 1
ID_SIZE = 32
ZERO_ID = bytes(ID_SIZE)  # stands for an all-zero chunk or block: never stored, never read

# Blob plaintext framing: one byte saying how the payload is encoded.
ENCODING_RAW = 0
ENCODING_ZSTD = 1

# Chunk kinds.
KIND_DATA = 1
KIND_RECORD = 2

PACK_MAGIC = b"VMVP\x01"
PACK_TRAILER = struct.Struct("<I4s")  # header length, b"VMVP"
HEADER_BLOB = struct.Struct("<IH")  # sealed blob length, number of chunks in it
HEADER_CHUNK = struct.Struct("<32sBI")  # id, kind, raw length
INDEX_ENTRY = struct.Struct("<32sBIIII")  # id, kind, blob offset, blob length, start, raw length
INDEX_PACK = struct.Struct("<32sI")  # pack id, number of entries

AAD_BLOB = b"vmvault-blob-v1"
AAD_PACK_HEADER = b"vmvault-pack-header-v1"
AAD_INDEX = b"vmvault-index-v1"
AAD_MANIFEST = b"vmvault-manifest-v1"
AAD_POINT = b"vmvault-point-v1"


# --- blob payloads ----------------------------------------------------------------------
# A blob holds one or more consecutive chunks of one block, compressed together: zstd
# finds far more to reuse in a 4 MiB run of text than in 64 KiB pieces (3.9x against 2.8x
# on log-like data). Each chunk is still addressed and verified on its own.
#
# Stored blob: encoding (1 byte) | nonce (12) | AES-256-GCM ciphertext + tag (16), with
# associated data AAD_BLOB + encoding. The encoding byte stays outside the ciphertext so
# the payload needs no framing copy; it is authenticated all the same.


def blob_aad(encoding: int) -> bytes:
    return AAD_BLOB + bytes((encoding,))


# A zstd block decodes to at most 128 KiB and takes at least 4 bytes (an RLE block), so a
# frame cannot hold more than 32768 bytes per byte of its own (zeros reach 32600).
ZSTD_MAX_RATIO = 32768


def _check_declared_size(frame: bytes, limit: int, what: str) -> None:
    """Refuse a zstd frame whose header declares more than ``limit`` bytes: the decompressor
    allocates the declared size up front (2**60 bytes is a MemoryError, not a damaged object),
    and ``max_output_size`` bounds only frames that declare nothing."""
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise CorruptObject(f"{what}: cannot decompress ({exc})") from None
    if declared > limit:
        raise CorruptObject(f"{what}: declares {declared} bytes of content, more than {limit}")


def decode_payload(encoding: int, payload: bytes, max_length: int, what: str) -> bytes:
    """Turn a blob's decrypted payload back into its chunks' bytes (at most ``max_length``)."""
    if encoding == ENCODING_RAW:
        data = payload
    elif encoding == ENCODING_ZSTD:
        _check_declared_size(payload, max_length, what)
        try:
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=max_length)
        except zstandard.ZstdError as exc:
            raise CorruptObject(f"{what}: cannot decompress ({exc})") from None
    else:
        raise CorruptObject(f"{what}: unknown payload encoding {encoding}")
    if len(data) > max_length:
        raise CorruptObject(f"{what}: decoded to {len(data)} bytes, more than {max_length}")
    return data


# --- packs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One chunk in a pack: in the sealed blob at ``offset`` (``length`` bytes) of the pack,
    at ``start`` of the blob's plaintext, ``raw_length`` bytes long."""

    chunk_id: bytes
    kind: int
    offset: int
    length: int
    start: int
    raw_length: int


def encode_pack_header(entries: Sequence[PackEntry]) -> bytes:
    """Plaintext of a pack header (sealed with AAD_PACK_HEADER, then placed after the blobs).

    ``entries`` are in pack order; consecutive entries with the same offset share a blob.
    """
    parts = []
    i = 0
    while i < len(entries):
        j = i
        while j < len(entries) and entries[j].offset == entries[i].offset:
            j += 1
        parts.append(HEADER_BLOB.pack(entries[i].length, j - i))
        parts.extend(HEADER_CHUNK.pack(e.chunk_id, e.kind, e.raw_length) for e in entries[i:j])
        i = j
    return b"".join(parts)


def decode_pack_header(plain: bytes, what: str) -> list[PackEntry]:
    entries = []
    offset = len(PACK_MAGIC)
    pos = 0
    try:
        while pos < len(plain):
            length, count = HEADER_BLOB.unpack_from(plain, pos)
            pos += HEADER_BLOB.size
            start = 0
            for _ in range(count):
                chunk_id, kind, raw_length = HEADER_CHUNK.unpack_from(plain, pos)
                pos += HEADER_CHUNK.size
                entries.append(PackEntry(chunk_id, kind, offset, length, start, raw_length))
                start += raw_length
            offset += length
    except struct.error:
        raise CorruptObject(f"{what}: pack header is truncated") from None
    return entries


def pack_data_end(entries: Sequence[PackEntry]) -> int:
    """Where the last blob ends: the sealed header must start exactly there."""
    return max((e.offset + e.length for e in entries), default=len(PACK_MAGIC))


def split_pack_tail(tail: bytes, pack_size: int, what: str) -> int:
    """Given the last PACK_TRAILER.size bytes of a pack, return the sealed header's length."""
    if len(tail) != PACK_TRAILER.size:
        raise CorruptObject(f"{what}: too short to be a pack")
    header_length, magic = PACK_TRAILER.unpack(tail)
    if magic != PACK_MAGIC[:4] or header_length + PACK_TRAILER.size + len(PACK_MAGIC) > pack_size:
        raise CorruptObject(f"{what}: bad pack trailer")
    return int(header_length)


# --- index ------------------------------------------------------------------------------


def encode_index(packs: Iterable[tuple[bytes, Sequence[PackEntry]]]) -> bytes:
    """Plaintext of an index object: for each pack its id and entries, zstd-compressed."""
    parts = [bytes((FORMAT_VERSION,))]
    for pack_id, entries in packs:
        parts.append(INDEX_PACK.pack(pack_id, len(entries)))
        parts.extend(
            INDEX_ENTRY.pack(e.chunk_id, e.kind, e.offset, e.length, e.start, e.raw_length)
            for e in entries
        )
    return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))


def index_plaintext(blob: bytes, what: str) -> bytes:
    """An index object's decompressed plaintext, its version checked: a version byte, then
    per pack an INDEX_PACK header and its INDEX_ENTRY records."""
    _check_declared_size(blob, len(blob) * ZSTD_MAX_RATIO, what)
    try:
        plain = zstandard.ZstdDecompressor().decompress(blob)
    except zstandard.ZstdError as exc:
        raise CorruptObject(f"{what}: cannot decompress index ({exc})") from None
    if not plain or plain[0] != FORMAT_VERSION:
        raise CorruptObject(f"{what}: unsupported index version")
    return bytes(plain)


def decode_index(blob: bytes, what: str) -> list[tuple[bytes, list[PackEntry]]]:
    plain = index_plaintext(blob, what)
    out = []
    pos = 1
    try:
        while pos < len(plain):
            pack_id, count = INDEX_PACK.unpack_from(plain, pos)
            pos += INDEX_PACK.size
            end = pos + count * INDEX_ENTRY.size
            if end > len(plain):
                raise CorruptObject(f"{what}: index is truncated")
            entries = [PackEntry(*f) for f in INDEX_ENTRY.iter_unpack(plain[pos:end])]
            out.append((pack_id, entries))
            pos = end
    except struct.error:
        raise CorruptObject(f"{what}: index is truncated") from None
    return out


# --- block records ----------------------------------------------------------------------


def encode_record(chunk_ids: Sequence[bytes]) -> bytes:
    """A block record lists the ids of the block's chunks (ZERO_ID for an all-zero chunk).

    Records are stored as KIND_RECORD blobs addressed by their own keyed hash, so an
    unchanged block costs one id in the next manifest and no new data.
    """
    return bytes((FORMAT_VERSION,)) + b"".join(chunk_ids)


def decode_record(plain: bytes, what: str) -> list[bytes]:
    if not plain or plain[0] != FORMAT_VERSION or (len(plain) - 1) % ID_SIZE:
        raise CorruptObject(f"{what}: malformed block record")
    return [plain[i : i + ID_SIZE] for i in range(1, len(plain), ID_SIZE)]


# --- manifests and points ----------------------------------------------------------------


@dataclass(frozen=True)
class DiskManifest:
    """The map of one disk in one recovery point: a record id per block (ZERO_ID: all zero)."""

    size: int
    block_size: int
    chunk_size: int
    records: list[bytes]

    def block_count(self) -> int:
        return -(-self.size // self.block_size)


MANIFEST_HEADER = struct.Struct("<BQII")  # version, disk size, block size, chunk size


def encode_manifest(manifest: DiskManifest) -> bytes:
    header = MANIFEST_HEADER.pack(
        FORMAT_VERSION, manifest.size, manifest.block_size, manifest.chunk_size
    )
    return header + b"".join(manifest.records)


def decode_manifest(plain: bytes, what: str) -> DiskManifest:
    if len(plain) < MANIFEST_HEADER.size:
        raise CorruptObject(f"{what}: manifest too short")
    version, size, block_size, chunk_size = MANIFEST_HEADER.unpack_from(plain)
    body = plain[MANIFEST_HEADER.size :]
    if version != FORMAT_VERSION or block_size == 0 or chunk_size == 0:
        raise CorruptObject(f"{what}: unsupported manifest")
    records = [body[i : i + ID_SIZE] for i in range(0, len(body), ID_SIZE)]
    manifest = DiskManifest(size, block_size, chunk_size, records)
    if len(body) % ID_SIZE or len(records) != manifest.block_count():
        raise CorruptObject(f"{what}: manifest has {len(records)} blocks, expected more or fewer")
    return manifest


def encode_json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_json(plain: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(plain)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CorruptObject(f"{what}: malformed JSON ({exc})") from None
    except RecursionError:
        raise CorruptObject(f"{what}: malformed JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise CorruptObject(f"{what}: expected a JSON object")
    return doc


# --- the shape of a recovery point ---------------------------------------------------------
# A point decrypts only under the vault's key, but the engine, the catalog, the fleet view
# and the CLI all index into it: a point that authenticates yet lacks a field it must have
# (an older bug, a hand-made vault, a key holder's tampering) is named damaged here, once,
# instead of a KeyError wherever it is first used. Unknown fields are allowed (newer writers).

_HEX_ID = re.compile(r"[0-9a-f]{64}")


def is_hex_id(value: object) -> bool:
    """Whether ``value`` is an object id as documents hold them (a manifest's, a pack's)."""
    return isinstance(value, str) and _HEX_ID.fullmatch(value) is not None


# The statistics readers index directly (planner, fleet, CLI); every writer since format v1
# wrote them.
_REQUIRED_STATS = ("read", "zero", "changed", "new", "stored", "seconds")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_time(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _disk_problem(disk: object) -> str | None:
    if not isinstance(disk, dict):
        return "not an object"
    if not isinstance(disk.get("name"), str) or not disk["name"]:
        return "no name"
    if not is_hex_id(disk.get("manifest")):
        return "no manifest id"
    if type(disk.get("size")) is not int or disk["size"] < 0:
        return "no size"
    stats = disk.get("stats")
    if not isinstance(stats, dict) or not all(_is_number(stats.get(k)) for k in _REQUIRED_STATS):
        return "no statistics"
    for optional in ("role", "format", "source"):
        if optional in disk and not isinstance(disk[optional], str):
            return f"{optional} is not text"
    if disk.get("parent") is not None and not isinstance(disk["parent"], str):
        return "parent is not a point id"
    return None


def _point_problem(doc: dict[str, Any], point_id: str) -> str | None:
    """What is wrong with a decrypted point, or None."""
    if doc.get("id") != point_id:
        return f"its id is {str(doc.get('id'))[:40]!r}, not {point_id!r}"
    if not isinstance(doc.get("vm"), str) or not doc["vm"]:
        return "no VM"
    if not _is_time(doc.get("created")):
        return "no creation time"
    if doc.get("completed") is not None and not _is_time(doc["completed"]):
        return "completion time is not a time"
    if not isinstance(doc.get("type"), str):
        return "no type"
    if doc.get("parent") is not None and not isinstance(doc["parent"], str):
        return "parent is not a point id"
    consistency = doc.get("consistency")
    if not isinstance(consistency, dict) or not isinstance(consistency.get("level"), str):
        return "no consistency level"
    if not isinstance(consistency.get("reason", ""), str):
        return "consistency reason is not text"
    disks = doc.get("disks")
    if not isinstance(disks, list):
        return "no list of disks"
    for i, disk in enumerate(disks):
        problem = _disk_problem(disk)
        if problem:
            return f"disk {i}: {problem}"
    excluded = doc.get("excluded", [])
    if not isinstance(excluded, list) or not all(
        isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("reason"), str)
        for d in excluded
    ):
        return "malformed list of excluded disks"
    for table in ("vm_config", "meta"):
        if not isinstance(doc.get(table, {}), dict):
            return f"{table} is not an object"
    config_disks = doc.get("vm_config", {}).get("disks", [])
    if not isinstance(config_disks, list) or not all(
        isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("path"), str)
        for d in config_disks
    ):
        return "VM configuration with malformed disks"
    return None


def decode_point(plain: bytes, point_id: str, what: str) -> RecoveryPoint:
    """A decrypted recovery point, checked to have the shape every reader relies on."""
    doc = decode_json(plain, what)
    problem = _point_problem(doc, point_id)
    if problem:
        raise CorruptObject(f"{what}: malformed recovery point ({problem})")
    return cast("RecoveryPoint", doc)  # the shape every reader relies on, checked above
