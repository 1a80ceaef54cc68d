"""Property tests of the vault format: every encoder's output decodes to its input."""

from __future__ import annotations

import os

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from vmvault.errors import CorruptObject
from vmvault.vault import format as fmt
from vmvault.vault.crypto import Cipher

ids = st.binary(min_size=32, max_size=32)
entries = st.builds(
    fmt.PackEntry,
    chunk_id=ids,
    kind=st.sampled_from([fmt.KIND_DATA, fmt.KIND_RECORD]),
    offset=st.integers(0, 2**32 - 1),
    length=st.integers(0, 2**32 - 1),
    start=st.integers(0, 2**32 - 1),
    raw_length=st.integers(0, 2**32 - 1),
)


@given(st.lists(ids, max_size=64))
def test_record_round_trip(chunk_ids: list[bytes]) -> None:
    assert fmt.decode_record(fmt.encode_record(chunk_ids), "r") == chunk_ids


@given(st.lists(st.tuples(ids, st.lists(entries, max_size=8)), max_size=8))
def test_index_round_trip(packs: list[tuple[bytes, list[fmt.PackEntry]]]) -> None:
    assert fmt.decode_index(fmt.encode_index(packs), "i") == packs


blobs = st.lists(
    st.tuples(
        st.integers(1, 2**20),  # sealed length
        st.lists(
            st.tuples(ids, st.sampled_from([1, 2]), st.integers(0, 2**16)), min_size=1, max_size=4
        ),
    ),
    max_size=16,
)


@given(blobs)
def test_pack_header_round_trip(items: list[tuple[int, list[tuple[bytes, int, int]]]]) -> None:
    offset = len(fmt.PACK_MAGIC)
    expected = []
    for length, chunks in items:
        start = 0
        for chunk_id, kind, raw in chunks:
            expected.append(fmt.PackEntry(chunk_id, kind, offset, length, start, raw))
            start += raw
        offset += length
    plain = fmt.encode_pack_header(expected)
    assert fmt.decode_pack_header(plain, "p") == expected
    assert fmt.pack_data_end(expected) == offset


@given(st.integers(0, 2**40), st.sampled_from([2**20, 2**22]), st.data())
def test_manifest_round_trip(size: int, block: int, data: st.DataObject) -> None:
    size = size % (64 * block)  # keep the record list small
    count = -(-size // block)
    records = data.draw(st.lists(ids, min_size=count, max_size=count))
    manifest = fmt.DiskManifest(size, block, 65536, records)
    assert fmt.decode_manifest(fmt.encode_manifest(manifest), "m") == manifest


@given(st.binary(max_size=5000))
def test_payload_round_trip(data: bytes) -> None:
    assert fmt.decode_payload(fmt.ENCODING_RAW, data, len(data), "c") == data
    compressed = zstandard.ZstdCompressor().compress(data)
    assert fmt.decode_payload(fmt.ENCODING_ZSTD, compressed, len(data), "c") == data


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=6), st.booleans())
def test_encode_blob_round_trip(pieces: list[bytes], compress: bool) -> None:
    from vmvault.engine.blobs import Compressor, encode_blob

    joined = b"".join(pieces)
    encoding, payload = encode_blob([memoryview(p) for p in pieces], compress, Compressor(3))
    assert fmt.decode_payload(encoding, bytes(payload), len(joined), "b") == joined


@given(st.binary(max_size=4096), st.binary(max_size=64))
def test_seal_open_round_trip_and_tamper(plain: bytes, aad: bytes) -> None:
    cipher = Cipher(os.urandom(32))
    sealed = cipher.seal(plain, aad)
    assert cipher.open(sealed, aad, "x") == plain
    flipped = bytearray(sealed)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(CorruptObject):
        cipher.open(bytes(flipped), aad, "x")
    with pytest.raises(CorruptObject):
        cipher.open(sealed, aad + b"other", "x")


def test_decoders_reject_garbage() -> None:
    with pytest.raises(CorruptObject):
        fmt.decode_record(b"\x07abc", "r")
    with pytest.raises(CorruptObject):
        fmt.decode_index(b"not zstd", "i")
    with pytest.raises(CorruptObject):
        fmt.decode_manifest(b"\x01", "m")
    with pytest.raises(CorruptObject):
        fmt.decode_payload(9, b"data", 4, "c")
    with pytest.raises(CorruptObject):
        fmt.decode_payload(fmt.ENCODING_RAW, b"abcde", 4, "c")
    with pytest.raises(CorruptObject):
        fmt.decode_payload(fmt.ENCODING_ZSTD, b"not zstd", 4, "c")
    with pytest.raises(CorruptObject):
        fmt.decode_pack_header(b"\x01\x00", "p")
    with pytest.raises(CorruptObject):
        fmt.split_pack_tail(b"\x00" * 8, 100, "p")
