"""Fuzzing of every decoder: hostile bytes get the decoder's documented error, nothing else.

Each decoder is fed structure-aware inputs (valid encodings from the real encoders, then
truncated, flipped, with lengths and counts made huge, with junk appended; valid documents
with fields removed, retyped or made absurd) and plain random bytes. The documented error
is the decoder's own `VmvaultError` subclass: `CorruptObject` for vault objects, `CorruptObject`
/ `WrongPassphrase` / `UnsupportedFormat` for the key file, `ScriptConfigError` for the scripts
config, `InventoryError` for the inventory. Any other exception (IndexError, struct.error,
KeyError, MemoryError from a declared length, RecursionError...) propagates and fails the test
with hypothesis' falsifying example.

Sealed objects are fuzzed twice: the plaintext decoders directly, and the `Vault` readers on a
real vault in a `LocalBackend` whose objects are overwritten with mutated bytes (authentication
must fail as `CorruptObject`) or with mutated plaintexts sealed under the vault's own key (the
shape checks behind the authentication must hold).

Time is bounded by hypothesis profiles chosen with ``VMVAULT_FUZZ``: ``ci`` (the default:
derandomized, the same examples each run, so the suite's verdict does not depend on luck),
``dev`` (a fresh seed each run, to look further) and ``soak`` (twenty times the examples,
with a fresh seed, for a long local session).
The crashes found are kept as explicit ``@example``s next to the fuzzer that found them.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import math
import os
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from support.cli import run_cli
from vmvault import fleet, protection
from vmvault.backends.base import validate_key
from vmvault.backends.local import LocalBackend
from vmvault.consistency.config import load_script_config
from vmvault.consistency.errors import ScriptConfigError
from vmvault.disks.source import RawDisk
from vmvault.engine.backup import DiskInput, backup
from vmvault.engine.check import check_vault
from vmvault.engine.restore import point_disk, verify_point
from vmvault.errors import (
    CorruptObject,
    ObjectMissing,
    UnsupportedFormat,
    VmvaultError,
    WrongPassphrase,
)
from vmvault.inventory import InventoryError, load_inventory, parse_inventory
from vmvault.vault import format as fmt
from vmvault.vault import keyslots, paperkey
from vmvault.vault.crypto import MasterKeys
from vmvault.vault.documents import SETTINGS_KEY
from vmvault.vault.paperkey import RecoveryKeyInvalid
from vmvault.vault.vault import AAD_GC, GC_PENDING_KEY, Vault

T = TypeVar("T")

# --- time budget --------------------------------------------------------------------------

_BASE = settings(
    deadline=None,  # one core shared by everyone: wall time per example is noise
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    max_examples=100,
)
settings.register_profile("vmvault-fuzz-dev", _BASE)
settings.register_profile("vmvault-fuzz-ci", _BASE, derandomize=True, database=None)
settings.register_profile("vmvault-fuzz-soak", _BASE)
_PROFILE = os.environ.get("VMVAULT_FUZZ") or "ci"
if _PROFILE not in ("dev", "ci", "soak"):
    raise RuntimeError(f"VMVAULT_FUZZ={_PROFILE!r}: use dev, ci or soak")
_FUZZ = settings.get_profile(f"vmvault-fuzz-{_PROFILE}")
_SCALE = 20 if _PROFILE == "soak" else 1


def fuzz(examples: int) -> settings:
    """The profile's settings with this fuzzer's share of the file's time budget.

    The profile is applied per test, never loaded globally: other test files keep theirs."""
    return settings(_FUZZ, max_examples=examples * _SCALE)


def outcome(call: Callable[[], T], *documented: type[BaseException]) -> T | BaseException:
    """Run a decoder: its result, or the documented error it raised. Anything else escapes."""
    try:
        return call()
    except documented as exc:
        return exc


# --- mutations ------------------------------------------------------------------------------

# Values a length, count or size field is most likely to break on.
_EDGE_UINTS = [0, 1, 2**7, 2**8 - 1, 2**15, 2**16 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` after one to four byte-level mutations."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "field", "insert", "append", "cut", "dup"]))
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif op == "field":  # a length or count made huge (or zero), little-endian
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(_EDGE_UINTS) | st.integers(0, 2**64 - 1))
            data[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=256))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 128))]
    return bytes(data)


def hostile(valid: bytes, max_random: int = 512) -> st.SearchStrategy[bytes]:
    """Mutations of a valid encoding, and plain random bytes."""
    return mutated(valid) | st.binary(max_size=max_random)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_frame_declaring(size: int, body: bytes = b"\x01\x00\x00") -> bytes:
    """A zstd frame whose header declares ``size`` bytes of content (8-byte field, single
    segment) whatever its blocks hold; the default body is one empty last raw block."""
    return _ZSTD_MAGIC + bytes((0xE0,)) + struct.pack("<Q", size) + body


forged_frames = st.builds(
    zstd_frame_declaring,
    st.sampled_from(_EDGE_UINTS) | st.integers(0, 2**64 - 1),
    st.binary(max_size=32),
)

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([*_EDGE_UINTS, -1, -(2**63), 10**30, 10**400]),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1e999",
            "00:00",
            "25:99",
            "UTC",
            "America",
            "../../etc/passwd",
            "a" * 300,
            "\x00",
            "\ud800",
            "ab" * 32,
            "zz" * 32,
        ]
    ),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


weird_values = st.recursive(_SCALARS, _containers, max_leaves=6)


def _slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) position of a JSON-like document, depth first."""
    if isinstance(node, dict):
        for key in list(node):
            yield node, key
            yield from _slots(node[key])
    elif isinstance(node, list):
        for i in range(len(node)):
            yield node, i
            yield from _slots(node[i])


@st.composite
def mutated_doc(draw: st.DrawFn, valid: Any, values: st.SearchStrategy[Any] = weird_values) -> Any:
    """``valid`` (a JSON-like document) with one to three fields removed, replaced by a value
    of another type or an absurd one, wrapped in a list, or joined by an unknown field."""
    doc = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(doc))
        if not slots or draw(st.integers(0, 30)) == 0:
            return draw(values)  # the whole document of another type
        parent, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "add"]))
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif action == "wrap":
            parent[key] = [parent[key]]
        elif isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=8))] = draw(values)
        elif isinstance(parent[key], list):
            parent[key].append(draw(values))
    return doc


def json_bytes(doc: Any) -> bytes:
    """JSON as an encoder that allows NaN and a lone surrogate would write it."""
    return json.dumps(doc).encode("utf-8", "surrogatepass")


NESTED_JSON = b"[" * 100_000 + b"]" * 100_000
NESTED_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


# --- plaintext decoders of vault objects ---------------------------------------------------

_IDS = [bytes([i]) * 32 for i in range(1, 6)]
_ENTRIES = [
    fmt.PackEntry(_IDS[0], fmt.KIND_DATA, 5, 100, 0, 4096),
    fmt.PackEntry(_IDS[1], fmt.KIND_DATA, 5, 100, 4096, 4096),
    fmt.PackEntry(_IDS[2], fmt.KIND_RECORD, 105, 60, 0, 33),
]
VALID_PACK_HEADER = fmt.encode_pack_header(_ENTRIES)
VALID_INDEX = fmt.encode_index([(_IDS[3], _ENTRIES)])
VALID_INDEX_PLAIN = zstandard.ZstdDecompressor().decompress(VALID_INDEX)
VALID_MANIFEST = fmt.encode_manifest(fmt.DiskManifest(3 * 65536 + 1, 65536, 4096, _IDS[:4]))
VALID_RECORD = fmt.encode_record(_IDS[:3])


@fuzz(300)
@given(hostile(VALID_PACK_HEADER))
def test_pack_header_decoder(plain: bytes) -> None:
    entries = outcome(lambda: fmt.decode_pack_header(plain, "pack"), CorruptObject)
    if isinstance(entries, list):
        fmt.pack_data_end(entries)


@fuzz(200)
@given(st.binary(max_size=12), st.integers(0, 2**64))
def test_pack_trailer_decoder(tail: bytes, pack_size: int) -> None:
    outcome(lambda: fmt.split_pack_tail(tail, pack_size, "pack"), CorruptObject)


@fuzz(300)
@given(
    hostile(VALID_INDEX)
    | mutated(VALID_INDEX_PLAIN).map(zstandard.ZstdCompressor().compress)
    | forged_frames
)
@example(zstd_frame_declaring(2**60))  # was a MemoryError: the declared size was allocated
def test_index_decoder(blob: bytes) -> None:
    outcome(lambda: fmt.decode_index(blob, "index"), CorruptObject)


@fuzz(200)
@given(hostile(VALID_MANIFEST))
def test_manifest_decoder(plain: bytes) -> None:
    outcome(lambda: fmt.decode_manifest(plain, "manifest"), CorruptObject)


@fuzz(150)
@given(hostile(VALID_RECORD))
def test_record_decoder(plain: bytes) -> None:
    outcome(lambda: fmt.decode_record(plain, "record"), CorruptObject)


@fuzz(300)
@given(
    st.sampled_from([fmt.ENCODING_RAW, fmt.ENCODING_ZSTD]) | st.integers(0, 255),
    hostile(zstandard.ZstdCompressor().compress(b"vmvault " * 2000)) | forged_frames,
    st.sampled_from([0, 4096, 16384, 4 * 2**20 + 4096]),
)
# Was a MemoryError: max_output_size bounds only frames that declare no size.
@example(fmt.ENCODING_ZSTD, zstd_frame_declaring(2**40), 4 * 2**20 + 4096)
def test_payload_decoder(encoding: int, payload: bytes, max_length: int) -> None:
    data = outcome(lambda: fmt.decode_payload(encoding, payload, max_length, "blob"), CorruptObject)
    if isinstance(data, bytes):
        assert len(data) <= max_length


@fuzz(200)
@given(hostile(b'{"created":"2024-01-01T00:00:00+00:00","packs":["' + b"ab" * 32 + b'"]}'))
@example(NESTED_JSON)  # was a RecursionError
@example(NESTED_OBJECT)
@example(b'"\\ud800"')  # a lone surrogate: decodes (to a string, then refused)
def test_json_decoder(plain: bytes) -> None:
    outcome(lambda: fmt.decode_json(plain, "object"), CorruptObject)


# --- a real vault whose objects are mutated -------------------------------------------------

PASSPHRASE = "fuzz passphrase"
TINY_SCRYPT = {"n": 2**4, "r": 1, "p": 1}  # the key file's cost is not under test here
KiB = 1024


class SealedVault:
    """A small real vault (one backup of a 1 MiB disk in several packs, a GC announcement,
    vault settings and a VM's protection record) and the bytes of each of its objects."""

    def __init__(self, root: Path) -> None:
        self.backend = LocalBackend(root / "vault", fsync=False)
        vault = Vault.init(
            self.backend,
            PASSPHRASE,
            chunk_size=4 * KiB,
            block_size=64 * KiB,
            pack_target=96 * KiB,
            scrypt=TINY_SCRYPT,
        )
        disk = root / "disk.img"
        with open(disk, "wb") as f:
            f.write(os.urandom(192 * KiB))  # incompressible
            f.write(b"log line: all well\n" * 10_000)  # compressible
            f.truncate(1024 * KiB)  # a hole at the end
        with RawDisk.open(disk) as source:
            self.point = backup(vault, "web", [DiskInput("os", source)], workers=1).point
        vault.set_gc_pending({"created": "2024-01-01T00:00:00+00:00", "packs": ["ab" * 32]})
        protection.set_soft_delete_days(vault, 14)
        protection.stop(vault, "web", delete_data=False)
        self.config = vault.config
        self.keys = vault.keys
        self.originals = {key: self.backend.get(key) for key in self.backend.list()}
        self.sealed_keys = sorted(k for k in self.originals if k not in ("config", "keys/default"))

    def vault(self) -> Vault:
        """A fresh `Vault` on the current objects: nothing remembered from an earlier example."""
        return Vault(self.backend, self.config, self.keys)

    def restore(self) -> None:
        """Put every object back as it was and drop what a reader added (damage markers)."""
        for key in list(self.backend.list()):
            if key not in self.originals:
                self.backend.delete(key)
        for key, data in self.originals.items():
            if self.backend.get(key) != data:
                self.backend.put(key, data)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> SealedVault:
    """One vault for the module: each example mutates it and puts every object back."""
    return SealedVault(tmp_path_factory.mktemp("sealed"))


def read_back(sealed: SealedVault, key: str) -> None:
    """Every reader of the object at ``key``, as the CLI, the engine and the server call them.
    Raises only the documented errors."""
    vault = sealed.vault()
    name = key.rsplit("/", 1)[-1]
    if key.startswith("points/"):
        vault.get_point(name)
    elif key.startswith("manifests/"):
        vault.get_manifest(name)
    elif key.startswith("index/"):
        vault.read_index_object(key)
    elif key.startswith("packs/"):
        vault.read_pack_header(bytes.fromhex(name))
    elif key == GC_PENDING_KEY:
        vault.gc_pending()
    elif key == SETTINGS_KEY:
        protection.settings(vault)
    elif key.startswith("protection/"):
        protection.state_of(vault, "web")
    else:
        raise AssertionError(f"no reader for {key}")


def read_everything(sealed: SealedVault) -> None:
    """The whole vault as a verify and a check see it: whatever is damaged is reported per
    object, block or chunk (as `VmvaultError`s) and the rest still reads."""
    vault = sealed.vault()
    vault.load_index()  # damaged index objects and GC announcements are skipped, not raised
    points, damaged = vault.read_points()
    assert all(isinstance(e, CorruptObject | ObjectMissing) for e in damaged.values())
    for point in points:
        reports = outcome(lambda: verify_point(vault, point["id"], workers=1), VmvaultError)  # noqa: B023
        for report in reports if isinstance(reports, list) else []:
            report.to_dict()
    vault.adopt_orphan_packs(write=False)
    check_vault(sealed.vault(), read_data=True).to_dict()


@fuzz(250)
@given(st.data())
def test_sealed_objects_with_mutated_bytes(sealed: SealedVault, data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sealed.sealed_keys), label="object")
    original = sealed.originals[key]
    damaged = data.draw(mutated(original), label="bytes")
    sealed.backend.put(key, damaged)
    try:
        result = outcome(lambda: read_back(sealed, key), CorruptObject)
        if damaged != original and not key.startswith("packs/"):
            # Sealed whole: any change fails authentication (a pack's header is sealed,
            # its blobs each on their own, so a change in a blob shows only on fetch).
            assert isinstance(result, CorruptObject), f"{key} read despite the change"
        read_everything(sealed)
    finally:
        sealed.restore()


@fuzz(150)
@given(st.data())
def test_vault_open_with_mutated_config_or_key_file(
    sealed: SealedVault, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(["config", "keys/default"]), label="object")
    original = sealed.originals[key]
    doc = json.loads(original)
    damaged = data.draw(hostile(original) | mutated_doc(doc).map(json_bytes), label="bytes")
    sealed.backend.put(key, damaged)
    try:
        opened = outcome(lambda: Vault.open(sealed.backend, PASSPHRASE), VmvaultError)
        if isinstance(opened, Vault):
            for point in opened.points():
                outcome(lambda: verify_point(opened, point["id"], workers=1), VmvaultError)  # noqa: B023
    finally:
        sealed.restore()


@pytest.mark.parametrize(
    "config",
    [
        b"null",  # was an AttributeError ('NoneType' object has no attribute 'get')
        b"[]",
        NESTED_JSON,  # was a RecursionError
        b'{"format": "vmvault-vault", "version": 1, "vault_id": 7, "chunk_size": 4096, '
        b'"block_size": 65536, "pack_target": 98304, "compression_level": 3, "created": ""}',
        b'{"format": "vmvault-vault", "version": 1, "vault_id": "v", "chunk_size": true, '
        b'"block_size": 65536, "pack_target": 98304, "compression_level": 3, "created": ""}',
        b'{"format": "vmvault-vault", "version": 1, "vault_id": "v", "chunk_size": 0, '
        b'"block_size": 65536, "pack_target": 98304, "compression_level": 3, "created": ""}',
    ],
    ids=["null", "list", "nested", "numeric-id", "bool-size", "zero-size"],
)
def test_a_malformed_vault_config_is_named(sealed: SealedVault, config: bytes) -> None:
    sealed.backend.put("config", config)
    try:
        with pytest.raises(CorruptObject, match="vault config is malformed"):
            Vault.open(sealed.backend, PASSPHRASE, load_index=False)
    finally:
        sealed.restore()


@pytest.mark.parametrize(
    "doc",
    [{"packs": None}, {"packs": "ab"}, {"packs": [7]}, {"packs": ["../config"]}, {}],
    ids=["none", "text", "number", "path", "missing"],
)
def test_a_malformed_gc_announcement_is_named(sealed: SealedVault, doc: dict[str, Any]) -> None:
    """It authenticates (sealed under the vault's key) but names no packs: before, loading
    the index raised TypeError ('NoneType' object is not iterable) or ValueError."""
    vault = sealed.vault()
    sealed.backend.put(GC_PENDING_KEY, vault.cipher.seal(json_bytes(doc), AAD_GC))
    try:
        with pytest.raises(CorruptObject, match="gc/pending"):
            vault.gc_pending()
        assert vault.gc_pending_packs() == set()  # a damaged announcement counts as none
        vault.load_index()
    finally:
        sealed.restore()


# --- points: authenticated, but of the wrong shape ------------------------------------------


def usable_point(vault: Vault, point: dict[str, Any]) -> None:
    """What the rest of the code does with a point it was given (listings, restores)."""
    fleet.point_summary(point)
    for disk in point["disks"]:
        assert point_disk(vault, point, disk["name"])["name"] == disk["name"]
        # The manifest id becomes an object's name: one name inside the vault, no path.
        assert "/" not in validate_key(f"manifests/{disk['manifest']}").removeprefix("manifests/")


@fuzz(300)
@given(st.data())
def test_point_decoder(sealed: SealedVault, data: st.DataObject) -> None:
    point_id = sealed.point["id"]
    doc = data.draw(mutated_doc(sealed.point), label="point")
    plain = data.draw(st.just(json_bytes(doc)) | mutated(json_bytes(doc)), label="plaintext")
    point = outcome(lambda: fmt.decode_point(plain, point_id, "point"), CorruptObject)
    if isinstance(point, dict):
        usable_point(sealed.vault(), point)


def seal_point(sealed: SealedVault, point_id: str, doc: Any) -> None:
    """Store ``doc`` as point ``point_id``, sealed with the vault's key: it authenticates."""
    key = f"points/{point_id}"
    plain = doc if isinstance(doc, bytes) else json_bytes(doc)
    sealed.backend.put(key, sealed.vault().cipher.seal(plain, fmt.AAD_POINT + key.encode()))


def _without(doc: dict[str, Any], *path: str | int) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return doc


def _with(doc: dict[str, Any], value: Any, *path: str | int) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


WRONG_SHAPES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "no disks": lambda p: _without(p, "disks"),
    "a disk without a manifest": lambda p: _without(p, "disks", 0, "manifest"),
    "a numeric id": lambda p: _with(p, 12345, "id"),
    "the id of another point": lambda p: _with(p, "20240101T000000.000000Z-00000000", "id"),
    "disks not a list": lambda p: _with(p, {"os": p["disks"][0]}, "disks"),
    "a disk that is a string": lambda p: _with(p, ["os"], "disks"),
    "a manifest id that is a path": lambda p: _with(p, "../config", "disks", 0, "manifest"),
    "a size that is text": lambda p: _with(p, "1 MiB", "disks", 0, "size"),
    "stats without stored": lambda p: _without(p, "disks", 0, "stats", "stored"),
    "no consistency level": lambda p: _with(p, {}, "consistency"),
    "a list, not an object": lambda p: [p],
    "a number vm": lambda p: _with(p, 7, "vm"),
}


@pytest.mark.parametrize("shape", sorted(WRONG_SHAPES))
def test_a_point_of_the_wrong_shape_is_named_damaged(sealed: SealedVault, shape: str) -> None:
    point_id = sealed.point["id"]
    seal_point(sealed, point_id, WRONG_SHAPES[shape](sealed.point))
    try:
        vault = sealed.vault()
        with pytest.raises(CorruptObject, match=f"points/{point_id}"):
            vault.get_point(point_id)
        points, damaged = vault.read_points()
        assert points == [] and isinstance(damaged[point_id], CorruptObject)
        with pytest.raises(CorruptObject):
            verify_point(vault, point_id, workers=1)
    finally:
        sealed.restore()


def test_the_cli_names_a_point_of_the_wrong_shape_damaged(
    sealed: SealedVault, tmp_path: Path
) -> None:
    """One line on the CLI, the exit code of found damage: no traceback."""
    point_id = sealed.point["id"]
    seal_point(sealed, point_id, _without(sealed.point, "disks"))
    try:
        env = {"VMVAULT_PASSPHRASE": PASSPHRASE, "VMVAULT_CATALOG": f"sqlite:///{tmp_path}/c.db"}
        vault = str(sealed.backend.root)
        result = run_cli("verify", point_id, "--vault", vault, env=env)
        assert result.returncode == 3, result.stderr
        assert "Traceback" not in result.stderr and "damaged" in result.stderr
        listing = run_cli("list", "--json", "--vault", vault, env=env)
        assert listing.returncode == 0, listing.stderr
        assert point_id in listing.stdout and "Traceback" not in listing.stderr
    finally:
        sealed.restore()


@fuzz(150)
@given(st.data())
def test_sealed_plaintexts_of_the_wrong_shape(sealed: SealedVault, data: st.DataObject) -> None:
    """Mutated plaintexts sealed under the vault's own key: they authenticate, so the shape
    checks behind the authentication are all that stands between them and the engine."""
    vault = sealed.vault()
    cipher = vault.cipher
    kind = data.draw(st.sampled_from(["point", "gc", "pack", "index", "manifest"]), label="kind")
    if kind == "point":
        doc = data.draw(mutated_doc(sealed.point), label="point")
        seal_point(sealed, sealed.point["id"], doc)
    elif kind == "gc":
        doc = data.draw(mutated_doc(vault.gc_pending()), label="gc")
        sealed.backend.put(GC_PENDING_KEY, cipher.seal(json_bytes(doc), AAD_GC))
    elif kind == "pack":
        key = data.draw(st.sampled_from([k for k in sealed.sealed_keys if k.startswith("packs/")]))
        pack = sealed.originals[key]
        length = fmt.split_pack_tail(pack[-fmt.PACK_TRAILER.size :], len(pack), key)
        start = len(pack) - fmt.PACK_TRAILER.size - length
        header = cipher.open(pack[start : start + length], fmt.AAD_PACK_HEADER, key)
        new_header = cipher.seal(data.draw(mutated(header), label="header"), fmt.AAD_PACK_HEADER)
        trailer = fmt.PACK_TRAILER.pack(len(new_header), fmt.PACK_MAGIC[:4])
        sealed.backend.put(key, pack[:start] + new_header + trailer)
    elif kind == "index":
        key = next(k for k in sealed.sealed_keys if k.startswith("index/"))
        plain = zstandard.ZstdDecompressor().decompress(
            cipher.open(sealed.originals[key], fmt.AAD_INDEX, key)
        )
        blob = data.draw(
            mutated(plain).map(zstandard.ZstdCompressor().compress) | forged_frames, label="index"
        )
        sealed.backend.put(key, cipher.seal(blob, fmt.AAD_INDEX))
    else:  # a manifest stored under its new id, and the point pointing at it
        old_id = sealed.point["disks"][0]["manifest"]
        key = f"manifests/{old_id}"
        plain = cipher.open(sealed.originals[key], fmt.AAD_MANIFEST + old_id.encode(), key)
        new = data.draw(mutated(plain), label="manifest")
        new_id = vault.keys.chunk_id(new).hex()
        sealed.backend.put(
            f"manifests/{new_id}", cipher.seal(new, fmt.AAD_MANIFEST + new_id.encode())
        )
        seal_point(sealed, sealed.point["id"], _with(sealed.point, new_id, "disks", 0, "manifest"))
    try:
        point = outcome(lambda: sealed.vault().get_point(sealed.point["id"]), CorruptObject)
        if isinstance(point, dict):
            usable_point(sealed.vault(), point)
        for key in sealed.sealed_keys:
            if not key.startswith("points/"):
                outcome(lambda: read_back(sealed, key), CorruptObject)  # noqa: B023
        assert isinstance(sealed.vault().gc_pending_packs(), set)
        read_everything(sealed)
    finally:
        sealed.restore()


# --- the key file -------------------------------------------------------------------------

VAULT_ID = "0123456789abcdef0123456789abcdef"
_KEYS = MasterKeys(bytes(range(32)), bytes(range(32, 64)), VAULT_ID)
VALID_KEY_FILE = keyslots.encode(
    _KEYS,
    PASSPHRASE,
    key=keyslots.DEFAULT_SLOT,
    kind="passphrase",
    label="fuzz",
    created="2026-01-01T00:00:00+00:00",
    scrypt=TINY_SCRYPT,
)
KEY_FILE_ERRORS = (CorruptObject, WrongPassphrase, UnsupportedFormat)


def unwrap_keys(key_file: bytes, passphrase: str, vault_id: str) -> MasterKeys:
    """What opening a vault does with its ``keys/default``: parse it, then unlock it."""
    return keyslots.parse(keyslots.DEFAULT_SLOT, key_file).unlock(passphrase, vault_id)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key_file_wrapping(secret: bytes) -> bytes:
    """A version 1 key file whose wrapped secret is ``secret``, sealed under the right
    passphrase (as docs/FORMAT.md describes it), so the secret is all that is wrong with it."""
    salt = b"fuzz salt 16 byt"
    kek = Scrypt(salt=salt, length=32, **TINY_SCRYPT).derive(PASSPHRASE.encode())
    nonce = bytes(12)
    sealed = nonce + AESGCM(kek).encrypt(nonce, secret, b"vmvault-key-v1")
    doc = {
        "version": 1,
        "kdf": {"name": "scrypt", **TINY_SCRYPT, "salt": _b64(salt)},
        "cipher": "aes-256-gcm",
        "wrapped": _b64(sealed),
    }
    return json.dumps(doc).encode()


VALID_SECRET = {
    "encryption_key": _b64(_KEYS.encryption_key),
    "id_key": _b64(_KEYS.id_key),
    "vault_id": VAULT_ID,
}


def usable_keys(keys: MasterKeys) -> None:
    keys.cipher().seal(b"x", b"aad")
    keys.chunk_id(b"x")


@fuzz(200)
@given(hostile(VALID_KEY_FILE) | mutated_doc(json.loads(VALID_KEY_FILE)).map(json_bytes))
@example(NESTED_JSON)
@example(NESTED_OBJECT)
def test_key_file_decoder(key_file: bytes) -> None:
    keys = outcome(lambda: unwrap_keys(key_file, PASSPHRASE, VAULT_ID), *KEY_FILE_ERRORS)
    if isinstance(keys, MasterKeys):
        usable_keys(keys)
    slot = outcome(lambda: keyslots.parse(keyslots.DEFAULT_SLOT, key_file), *KEY_FILE_ERRORS)
    if isinstance(slot, keyslots.KeySlot):  # what `vault key list` shows of it
        outcome(lambda: slot.about(_KEYS), CorruptObject)


@fuzz(150)
@given(hostile(json_bytes(VALID_SECRET)) | mutated_doc(VALID_SECRET).map(json_bytes))
# Each was a crash: KeyError, TypeError (base64 of a list), UnicodeDecodeError,
# JSONDecodeError, TypeError ('int' object is not subscriptable), a key of the wrong size.
@example(json_bytes({k: v for k, v in VALID_SECRET.items() if k != "id_key"}))
@example(json_bytes({**VALID_SECRET, "encryption_key": []}))
@example(b"\x80")
@example(b"{")
@example(b"7")
@example(json_bytes({**VALID_SECRET, "id_key": _b64(bytes(16))}))
def test_key_file_with_a_malformed_secret(secret: bytes) -> None:
    """The passphrase is right, the secret it unwraps is not: a damaged key file."""
    keys = outcome(
        lambda: unwrap_keys(key_file_wrapping(secret), PASSPHRASE, VAULT_ID), CorruptObject
    )
    if isinstance(keys, MasterKeys):
        usable_keys(keys)


def _with_scrypt(n: Any, r: Any, p: Any) -> bytes:
    doc = json.loads(VALID_KEY_FILE)
    doc["kdf"].update(n=n, r=r, p=p)
    return json.dumps(doc).encode()


_out_of_range = st.one_of(
    st.tuples(st.integers(23, 80).map(lambda e: 2**e), st.integers(1, 8), st.integers(1, 4)),
    st.tuples(st.integers(1, 2**14).map(lambda x: 2 * x + 1), st.integers(1, 8), st.integers(1, 4)),
    st.tuples(st.sampled_from([2**14, 2**15]), st.integers(2**10, 2**40), st.integers(1, 4)),
    st.tuples(st.sampled_from([2**14, 2**15]), st.integers(1, 8), st.integers(2**10, 2**40)),
    st.tuples(st.integers(-(2**70), 1), st.integers(-5, 8), st.integers(-5, 4)),
    st.tuples(weird_values, weird_values, weird_values),
)


@fuzz(150)
@given(_out_of_range)
@example((2**40, 8, 1))  # 128 TiB of memory asked: refused, not a MemoryError
@example((2**14, 8, 2**16))  # 16 MiB, but 65536 passes: hours of work
@example((2**15, 8, 1.5))
@example((float("inf"), 8, 1))
def test_absurd_scrypt_parameters_are_refused_at_once(params: tuple[Any, Any, Any]) -> None:
    n, r, p = params
    whole = all(type(v) is int for v in params)
    # Only weird_values can draw parameters a vault may use: those are not under test here.
    assume(not (whole and n >= 2 and n & (n - 1) == 0 and r >= 1 and p >= 1 and n * r * p <= 2**22))
    started = time.monotonic()
    with pytest.raises(CorruptObject, match="key file"):
        unwrap_keys(_with_scrypt(n, r, p), PASSPHRASE, VAULT_ID)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("n", "r", "p"),
    [(2**40, 8, 1), (2**14, 8, 2**16), (2**21, 8, 1)],
    ids=["memory-error", "hours-of-work", "2-GiB"],
)
def test_a_key_file_asking_for_absurd_work_fails_in_one_line(
    tmp_path: Path, n: int, r: int, p: int
) -> None:
    """The CLI on a vault whose key file asks for this: one error line within seconds. Before
    the bound these raised MemoryError, ran for hours, or took 2 GiB and seconds of work to
    end on a misleading "wrong passphrase"."""
    root = tmp_path / "vault"
    Vault.init(LocalBackend(root, fsync=False), PASSPHRASE, scrypt=TINY_SCRYPT)
    key_file = root / "keys" / "default"
    doc = json.loads(key_file.read_bytes())
    doc["kdf"].update(n=n, r=r, p=p)
    key_file.write_text(json.dumps(doc))
    command = [sys.executable, "-c", "from vmvault.cli.main import run; run()"]
    result = subprocess.run(
        [*command, "check", "--vault", str(root)],
        env={
            **os.environ,
            "VMVAULT_PASSPHRASE": PASSPHRASE,
            "VMVAULT_CATALOG": f"sqlite:///{tmp_path}/catalog.db",
        },
        capture_output=True,
        text=True,
        timeout=30,  # the hang is the failure
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "scrypt" in result.stderr, result.stderr


# --- recovery keys on paper ------------------------------------------------------------------

PRINTED_RECOVERY_KEY = paperkey.encode(bytes(range(32)), VAULT_ID, "keys/0123456789abcdef")


@fuzz(200)
@given(
    hostile(PRINTED_RECOVERY_KEY.encode()).map(lambda b: b.decode("utf-8", "replace"))
    | st.text(max_size=300)
)
@example("9" * 5000 + ": x\n2: y")  # a line number too long for int()
@example("\n".join(f"{n}: " + "A" * 18 for n in range(1, 5)))
def test_recovery_key_decoder(text: str) -> None:
    """Whatever a passphrase file holds: a secret of 32 bytes or one named error."""
    if paperkey.looks_like_one(text):
        secret = outcome(lambda: paperkey.decode(text), RecoveryKeyInvalid)
        assert isinstance(secret, RecoveryKeyInvalid) or len(secret) == 32


# --- the scripts config ---------------------------------------------------------------------

AZURE_TEMPLATE = {
    "pluginName": "ScriptRunner",
    "preScriptLocation": "/etc/vmvault/pre.sh",
    "postScriptLocation": "/etc/vmvault/post.sh",
    "preScriptParams": ["", ""],
    "postScriptParams": ["--quiet"],
    "preScriptNoOfRetries": 0,
    "postScriptNoOfRetries": 1,
    "timeoutInSeconds": 30,
    "continueBackupOnFailure": True,
    "fsFreezeEnabled": True,
    "ScriptsExecutionPollTimeSeconds": 3,
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-files")


def write_root_file(path: Path, data: bytes) -> Path:
    """A file as the scripts config must be: owned by root (the tests run as root), 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchmod(f.fileno(), stat.S_IRUSR | stat.S_IWUSR)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="the scripts config must be owned by root")
@fuzz(200)
@given(hostile(json_bytes(AZURE_TEMPLATE)) | mutated_doc(AZURE_TEMPLATE).map(json_bytes))
@example(NESTED_JSON)
@example(NESTED_OBJECT)
def test_scripts_config_decoder(scratch: Path, raw: bytes) -> None:
    path = write_root_file(scratch / "VMSnapshotScriptPluginConfig.json", raw)
    outcome(lambda: load_script_config(path), ScriptConfigError)


# --- the inventory --------------------------------------------------------------------------

VALID_INVENTORY: dict[str, Any] = {
    "limits": {"disk_mb_per_s": 60.0, "max_vms": 40, "max_disks_per_pool": 20},
    "pools": {"ssd-a": {"egress_mb_per_s": 480, "requests_per_second": 20000}},
    "policies": {
        "nightly": {
            "schedule": {"kind": "daily", "time": "22:30", "timezone": "Europe/Berlin"},
            "retention": {"daily_days": 30, "weekly_weeks": 12},
        },
        "hourly": {
            "schedule": {"kind": "hourly", "time": "08:00", "every_hours": 4, "window_hours": 12},
        },
    },
    "alerts": {
        "webhooks": ["https://example.com/hook"],
        "smtp": {"host": "mail", "from": "vmvault@example.com", "to": ["ops@example.com"]},
        "timeout": 5.0,
    },
    "pricing": {"currency": "EUR", "small_limit_gb": 50, "storage_per_gb_month": "0.02"},
    "vms": [
        {
            "name": "web01",
            "host": "hv1",
            "state": "running",
            "policy": "nightly",
            "start": "23:00",
            "freeze": ["/"],
            "tags": {"cloud_service": "shop"},
            "disks": [
                {"name": "os", "path": "/var/lib/vms/web01-os.img", "role": "os", "pool": "ssd-a"},
                {
                    "name": "data",
                    "path": "/var/lib/vms/web01.qcow2",
                    "format": "qcow2",
                    "used_gb": 12.5,
                },
            ],
        }
    ],
}


def toml_value(value: Any) -> str:
    """A TOML value, inline (tables as inline tables); strings escaped as JSON does, which
    TOML reads the same, a lone surrogate included (then refused by the parser)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def toml_document(doc: Any) -> str:
    table = doc if isinstance(doc, dict) else {"vms": doc}
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items())


_toml_values = st.recursive(
    _SCALARS.filter(lambda v: v is not None)
    | st.sampled_from(
        [dt.time(2, 30), dt.time(2, 30, 5), dt.date(2024, 2, 29), dt.datetime(2024, 1, 1, 3, 0)]
    ),
    _containers,
    max_leaves=6,
)
VALID_INVENTORY_TEXT = toml_document(VALID_INVENTORY)


def test_the_valid_inventory_loads() -> None:
    """The fuzzers start from an inventory that loads: mutations, not garbage, reach the model."""
    assert parse_inventory(VALID_INVENTORY_TEXT, "inv.toml").vm("web01").policy == "nightly"


@fuzz(300)
@given(mutated_doc(VALID_INVENTORY, _toml_values).map(toml_document))
@example(VALID_INVENTORY_TEXT.replace("Europe/Berlin", "America"))  # a folder of zoneinfo
@example(VALID_INVENTORY_TEXT.replace("Europe/Berlin", "Europe/" + "x" * 300))
@example("vms = " + "[" * 5000 + "]" * 5000 + "\n")
@example("tags = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n")
@example("limits = {max_vms = " + "9" * 5000 + "}\n")
@example(VALID_INVENTORY_TEXT.replace('small_limit_gb" = 50', 'small_limit_gb" = inf'))
@example(VALID_INVENTORY_TEXT.replace('small_limit_gb" = 50', 'small_limit_gb" = 1e308'))
def test_inventory_decoder(text: str) -> None:
    outcome(lambda: parse_inventory(text, "inv.toml"), InventoryError)


@fuzz(150)
@given(hostile(VALID_INVENTORY_TEXT.encode(), max_random=256))
@example(b"\xff\xfe[[vms]]\n")
def test_inventory_file_loader(scratch: Path, raw: bytes) -> None:
    path = scratch / "inventory.toml"
    path.write_bytes(raw)
    outcome(lambda: load_inventory(path), InventoryError)
