"""A vault: a backend plus its configuration, keys and chunk index.

This is the only module (with vault/chunkio.py, the part of ``Vault`` that reads chunks
back and seals blobs and records) that knows which object key holds what; the engine asks
it to store and fetch chunks, records, manifests and recovery points.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import blake3

from vmvault.backends.base import Backend, ObjectRetained, WriteRetention, put_new
from vmvault.errors import (
    CorruptObject,
    ObjectMissing,
    PointNotFound,
    VaultExists,
    VaultNotFound,
    VmvaultError,
)
from vmvault.model.point import RecoveryPoint
from vmvault.vault import keyslots, store_retention
from vmvault.vault.chunkio import ChunkIO
from vmvault.vault.config import VaultConfig
from vmvault.vault.crypto import MasterKeys, new_master_keys
from vmvault.vault.damage import DamageMarks
from vmvault.vault.format import (
    AAD_INDEX,
    AAD_MANIFEST,
    AAD_PACK_HEADER,
    AAD_POINT,
    FORMAT_VERSION,
    PACK_TRAILER,
    DiskManifest,
    PackEntry,
    decode_index,
    decode_json,
    decode_manifest,
    decode_pack_header,
    decode_point,
    encode_index,
    encode_json,
    encode_manifest,
    is_hex_id,
    pack_data_end,
    split_pack_tail,
)
from vmvault.vault.index import ChunkIndex
from vmvault.vault.indexrows import IndexArrays, decode_index_arrays
from vmvault.vault.localindex import LocalIndex
from vmvault.vault.packs import PackWriter, index_key, pack_key

CONFIG_KEY = "config"
GC_PENDING_KEY = "gc/pending"
AAD_GC = b"vmvault-gc-v1"
DEFAULT_CHUNK_SIZE = 64 * 1024
DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
DEFAULT_PACK_TARGET = 16 * 1024 * 1024
DEFAULT_COMPRESSION_LEVEL = 3
T = TypeVar("T")


def _put_first_key(
    backend: Backend,
    keys: MasterKeys,
    passphrase: str,
    created: str,
    scrypt: dict[str, int] | None,
) -> keyslots.KeySlot:
    """A new vault's (or copy's) first key slot, ``keys/default``: written before its config."""
    slot = keyslots.encode(
        keys,
        passphrase,
        key=keyslots.DEFAULT_SLOT,
        kind="passphrase",
        label="",
        created=created,
        scrypt=scrypt,
    )
    backend.put(keyslots.DEFAULT_SLOT, slot)
    return keyslots.parse(keyslots.DEFAULT_SLOT, slot)


class Vault(ChunkIO):
    def __init__(self, backend: Backend, config: VaultConfig, keys: MasterKeys) -> None:
        self.backend = backend
        self.config = config
        self.keys = keys
        self.cipher = keys.cipher()
        self.index = ChunkIndex()
        self._local_index: LocalIndex | None = None  # the host's index of this vault, once opened
        # Filled by load_index: the packs the backend listed, and unreadable index objects.
        self.listed_packs: set[bytes] | None = None
        self.index_problems: dict[str, VmvaultError] = {}
        self.damage = DamageMarks(backend)  # packs a read found damaged (vault/damage.py)
        # What the store retains on write (vault/store_retention.py); set when opened.
        self.store_retention: WriteRetention | None = None
        # The key slot this vault was opened with, or made with (vault/keyslots.py).
        self.key_slot: keyslots.KeySlot | None = None

    def configure_store_retention(self) -> WriteRetention | None:
        """Ask the store to retain what the vault's settings say (again, after they change)."""
        self.store_retention = store_retention.configure(self)
        return self.store_retention

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        passphrase: str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        block_size: int = DEFAULT_BLOCK_SIZE,
        pack_target: int = DEFAULT_PACK_TARGET,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        scrypt: dict[str, int] | None = None,
    ) -> Vault:
        if backend.exists(CONFIG_KEY):
            raise VaultExists(f"a vault already exists at {backend.describe()}")
        if block_size % chunk_size or chunk_size % 4096:
            raise ValueError("block size must be a multiple of the chunk size (itself of 4 KiB)")
        config = VaultConfig(
            vault_id=secrets.token_hex(16),
            version=FORMAT_VERSION,
            chunk_size=chunk_size,
            block_size=block_size,
            pack_target=pack_target,
            compression_level=compression_level,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        keys = new_master_keys(config.vault_id)
        slot = _put_first_key(backend, keys, passphrase, config.created, scrypt)
        backend.put(CONFIG_KEY, config.to_json())  # last: a vault exists once it has a config
        vault = cls(backend, config, keys)
        vault.key_slot = slot
        return vault

    @classmethod
    def init_copy(
        cls,
        backend: Backend,
        source: Vault,
        passphrase: str,
        *,
        documents: Mapping[str, tuple[bytes, Mapping[str, Any]]] | None = None,
        scrypt: dict[str, int] | None = None,
    ) -> Vault:
        """A new, empty copy of ``source`` in ``backend``: the same master keys (so sealed
        objects cross as they are), wrapped under ``passphrase``, and a vault id of its own
        (its catalog rows, locks and cache are its own). ``documents`` (key -> (AAD, doc))
        are sealed into it before its config, which is written last, as by ``init``."""
        if backend.exists(CONFIG_KEY):
            raise VaultExists(f"a vault already exists at {backend.describe()}")
        config = replace(
            source.config,
            vault_id=secrets.token_hex(16),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        keys = replace(source.keys, vault_id=config.vault_id)
        slot = _put_first_key(backend, keys, passphrase, config.created, scrypt)
        copy = cls(backend, config, keys)
        copy.key_slot = slot
        for key, (aad, doc) in (documents or {}).items():
            copy.put_document(key, doc, aad)
        copy.configure_store_retention()  # the settings it inherited may ask for it
        backend.put(CONFIG_KEY, config.to_json())
        return copy

    def shares_keys(self, other: Vault) -> bool:
        """Whether ``other`` is this vault or a copy of it (the same master keys)."""
        return (self.keys.encryption_key, self.keys.id_key) == (
            other.keys.encryption_key,
            other.keys.id_key,
        )

    @classmethod
    def open(cls, backend: Backend, passphrase: str, *, load_index: bool = True) -> Vault:
        try:
            # Read, not asked for first: one request fewer on an object store.
            raw_config = backend.get(CONFIG_KEY)
        except ObjectMissing:
            raise VaultNotFound(
                f"no vault at {backend.describe()} (run `vmvault init` first)"
            ) from None
        config = VaultConfig.from_json(raw_config)
        keys, slot = keyslots.open_keys(backend, passphrase, config.vault_id)
        vault = cls(backend, config, keys)
        vault.key_slot = slot
        vault.configure_store_retention()  # before anything is written
        if load_index:
            vault.load_index()
        return vault

    def load_index(self) -> None:
        """Bring the host's chunk index up to the vault's index objects, then list the packs.

        Only index objects the host's index has not absorbed are read (vault/localindex.py);
        one that vanished (a collection or `vault reindex` rewrote the index) makes it
        rebuild from all of them. Packs are listed after the index objects are read: a pack
        is durable before any index object names it, so a pack named but not listed is
        lost, not merely new. Its chunks count as absent (a backup stores them again). A
        damaged index object is skipped (``index_problems``); the packs it named are orphans
        the next backup adopts.
        """
        if self._local_index is None:
            self._local_index = LocalIndex.for_vault(self.config.vault_id)
        store = self._local_index
        listed = list(self.backend.list("index/"))
        self.index_problems = store.sync(listed, self.read_index_arrays)
        named_before = store.pack_count()  # packs indexed after this may be newer than the listing
        self.listed_packs = set(self.pack_ids())
        usable = self.listed_packs - self.damage.load()
        self.index = ChunkIndex.opened(store, usable, named_before=named_before)
        self.index.exclude_packs(self.gc_pending_packs())

    def forget_local_index(self) -> None:
        """The host's index absorbed an index object that is now unreadable in the vault
        (``check`` or GC found it damaged): the next open rebuilds it from the objects that
        read, so the packs it named become orphans that are adopted again."""
        if self._local_index is not None:
            self._local_index.drop()

    # -- garbage collection hand-off ------------------------------------------------------

    def get_document(self, key: str, aad: bytes) -> dict[str, Any] | None:
        """A small sealed JSON object (settings, protection, gc/pending), None if absent."""
        try:
            sealed = self.backend.get(key)
        except ObjectMissing:
            return None
        return decode_json(self.cipher.open(sealed, aad, key), key)

    def put_document(self, key: str, doc: Mapping[str, Any] | None, aad: bytes) -> None:
        """Replace a small sealed JSON object whole (None deletes it)."""
        if doc is None:
            self.backend.delete(key)
        else:
            self.backend.put(key, self.cipher.seal(encode_json(doc), aad))

    def gc_pending(self) -> dict[str, Any] | None:
        """Packs a garbage collection has decided to remove (see engine/gc.py), if any."""
        doc = self.get_document(GC_PENDING_KEY, AAD_GC)
        if doc is None:
            return None
        packs = doc.get("packs")
        if not isinstance(packs, list) or not all(is_hex_id(p) for p in packs):
            raise CorruptObject(f"{GC_PENDING_KEY}: malformed announcement: no list of pack ids")
        return doc

    def gc_pending_packs(self) -> set[bytes]:
        """The packs an unfinished garbage collection announced it will remove.

        A damaged announcement counts as none (`check` names it): the next collection
        writes a new one, and its sweep waits for every job holding the vault anyway."""
        try:
            pending = self.gc_pending()
        except CorruptObject:
            return set()
        return {bytes.fromhex(p) for p in pending["packs"]} if pending else set()

    def set_gc_pending(self, doc: dict[str, Any] | None) -> None:
        self.put_document(GC_PENDING_KEY, doc, AAD_GC)

    def read_index_object(self, key: str) -> list[tuple[bytes, list[PackEntry]]]:
        return self._open_object(
            key, lambda sealed: decode_index(self.cipher.open(sealed, AAD_INDEX, key), key)
        )

    def _open_object(self, key: str, open_: Callable[[bytes], T]) -> T:
        """``open_`` (authenticate and decode) an object read whole.

        A copy from a local cache (backends/cache.py) that does not open is dropped and the
        store's read instead: a damaged or stale copy may cost a request, never a read."""
        try:
            return open_(self.backend.get(key))
        except CorruptObject:
            uncache: Callable[[str], bool] | None = getattr(self.backend, "uncache", None)
            if uncache is None or not uncache(key):
                raise
        try:
            return open_(self.backend.get(key))
        except CorruptObject:
            uncache(key)  # the store's copy is damaged too: not kept either
            raise

    def read_index_arrays(self, key: str) -> IndexArrays:
        """An index object as numpy records per pack (for the host's index: no object per
        entry)."""
        return self._open_object(
            key, lambda sealed: decode_index_arrays(self.cipher.open(sealed, AAD_INDEX, key), key)
        )

    def pack_ids(self) -> list[bytes]:
        return [bytes.fromhex(k.rsplit("/", 1)[1]) for k in self.backend.list("packs/")]

    def read_pack_header(self, pack_id: bytes) -> list[PackEntry]:
        key = pack_key(pack_id)
        size = self.backend.size(key)
        tail = self.backend.get(key, max(size - PACK_TRAILER.size, 0), min(size, PACK_TRAILER.size))
        header_length = split_pack_tail(tail, size, key)
        start = size - PACK_TRAILER.size - header_length
        return self._pack_header(key, self.backend.get(key, start, header_length), start)

    def pack_entries(self, pack_id: bytes, pack: bytes | memoryview) -> list[PackEntry]:
        """The entries of a pack held whole in memory (a copy in transit), its name checked:
        a pack is named by the BLAKE3 of its bytes."""
        key = pack_key(pack_id)
        if blake3.blake3(pack).digest() != pack_id:
            raise CorruptObject(f"{key}: content does not match its name")
        size = len(pack)
        header_length = split_pack_tail(bytes(pack[max(size - PACK_TRAILER.size, 0) :]), size, key)
        start = size - PACK_TRAILER.size - header_length
        return self._pack_header(key, pack[start : start + header_length], start)

    def _pack_header(self, key: str, sealed: bytes | memoryview, data_end: int) -> list[PackEntry]:
        entries = decode_pack_header(self.cipher.open(sealed, AAD_PACK_HEADER, key), key)
        if pack_data_end(entries) != data_end:
            raise CorruptObject(f"{key}: header does not match the pack's size")
        return entries

    def adopt_orphan_packs(self, *, write: bool = True, doomed: bool = False) -> int:
        """Index packs that a crashed backup wrote but never indexed, so a re-run reuses them.

        ``write=False`` indexes them in memory only: a restore or verify reads chunks of
        packs whose index object is lost or damaged, and writes nothing to the vault.

        Packs ``gc/pending`` names are left alone unless ``doomed`` (garbage collection's
        own adoption): a sweep unindexes them before deleting them, and an index object
        written meanwhile would name them once they are gone. What was live in them was
        copied, and indexed, first."""
        listed = self.pack_ids() if self.listed_packs is None else self.listed_packs
        skip = set() if doomed else self.gc_pending_packs()
        orphans = [p for p in self.index.unindexed(sorted(listed)) if p not in skip]
        adopted = []
        for pack_id in orphans:
            try:
                entries = self.read_pack_header(pack_id)
            except (CorruptObject, ObjectMissing):
                continue  # `check` reports it; a damaged orphan holds nothing committed
            self.index.add_pack(pack_id, entries)
            adopted.append((pack_id, entries))
        if adopted and write:
            self.write_index_object(adopted)
        return len(adopted)

    def rebuild_index(self) -> tuple[int, list[str]]:
        """Index every readable pack from its own header; drop the old index objects.

        The new index object is durable before any old one is deleted, so a crash in
        between leaves two index objects that agree, never none.
        """
        old = list(self.backend.list("index/"))
        self.index = ChunkIndex()
        found, unreadable = [], []
        for pack_id in self.pack_ids():
            try:
                entries = self.read_pack_header(pack_id)
            except (CorruptObject, ObjectMissing):
                unreadable.append(pack_key(pack_id))
                continue
            self.index.add_pack(pack_id, entries)
            found.append((pack_id, entries))
        new_key = self.write_index_object(found) if found else None
        for key in old:
            if key != new_key:
                # One the store still retains stays, read beside the new one (what it names
                # that is gone counts as absent, as for any index object).
                with contextlib.suppress(ObjectRetained):
                    self.backend.delete(key)
        self.load_index()  # the host's index drops what the old index objects named
        return len(found), unreadable

    def write_index_object(self, packs: list[tuple[bytes, list[PackEntry]]]) -> str:
        sealed = self.cipher.seal(encode_index(packs), AAD_INDEX)
        key = index_key(blake3.blake3(sealed).digest())
        put_new(self.backend, key, sealed)
        self.index.absorbed(key, packs)  # the host's index need not read it back
        return key

    def pack_writer(self, *, upload_threads: int | None = None) -> PackWriter:
        """A writer of new packs; by default with as many uploaders as the backend says
        pay off (its ``parallel_writes`` hint: 1 for a directory, more for an object store)."""
        if upload_threads is None:
            upload_threads = max(1, int(getattr(self.backend, "parallel_writes", 1)))
        return PackWriter(
            self.backend,
            self.cipher,
            self.index,
            pack_target=self.config.pack_target,
            upload_threads=upload_threads,
        )

    # -- manifests and recovery points ---------------------------------------------------

    def put_manifest(self, manifest: DiskManifest) -> str:
        plain = encode_manifest(manifest)
        manifest_id = self.keys.chunk_id(plain).hex()
        key = f"manifests/{manifest_id}"
        sealed = self.cipher.seal(plain, AAD_MANIFEST + manifest_id.encode())
        try:
            # Already stored by an earlier backup of the same disk state; one whose put
            # failed may have left a prefix (a store without atomic puts): written again.
            stored = self.backend.size(key) == len(sealed)
        except ObjectMissing:
            stored = False
        if not stored:
            self.backend.put(key, sealed)
        return manifest_id

    def get_manifest(self, manifest_id: str) -> DiskManifest:
        key = f"manifests/{manifest_id}"

        def open_(sealed: bytes) -> DiskManifest:
            plain = self.cipher.open(sealed, AAD_MANIFEST + manifest_id.encode(), key)
            if self.keys.chunk_id(plain).hex() != manifest_id:
                raise CorruptObject(f"{key}: content does not match its id")
            return decode_manifest(plain, key)

        return self._open_object(key, open_)

    def put_point(self, point: RecoveryPoint) -> None:
        """Commit a recovery point: called last, after every object it names is durable."""
        key = f"points/{point['id']}"
        # A failed commit leaves no point: neither a torn one (a damaged point) nor a whole
        # one whose success was never reported (the backup is reported failed).
        put_new(self.backend, key, self.cipher.seal(encode_json(point), AAD_POINT + key.encode()))

    def get_point(self, point_id: str) -> RecoveryPoint:
        key = f"points/{point_id}"
        try:
            return self._open_object(
                key,
                lambda sealed: decode_point(
                    self.cipher.open(sealed, AAD_POINT + key.encode(), key), point_id, key
                ),
            )
        except ObjectMissing:
            raise PointNotFound(f"no recovery point {point_id!r} in this vault") from None

    def readable_point(self, point_id: str) -> RecoveryPoint | None:
        """The point, or None when its object is damaged or gone (it costs that point only)."""
        try:
            return self.get_point(point_id)
        except (CorruptObject, ObjectMissing, PointNotFound):
            return None

    def point_ids(self) -> list[str]:
        return sorted(k.split("/", 1)[1] for k in self.backend.list("points/"))

    def read_points(self) -> tuple[list[RecoveryPoint], dict[str, VmvaultError]]:
        """Every readable point, oldest first, and the damaged ones with what is wrong.

        A damaged point object costs that point only: callers list it as damaged and go on.
        """
        points: list[RecoveryPoint] = []
        damaged: dict[str, VmvaultError] = {}
        for point_id in self.point_ids():
            try:
                points.append(self.get_point(point_id))
            except PointNotFound:
                continue  # deleted since the listing
            except (CorruptObject, ObjectMissing) as exc:
                damaged[point_id] = exc
        return points, damaged

    def points(self) -> list[RecoveryPoint]:
        """The readable points, oldest first (see ``read_points`` for the damaged ones)."""
        return self.read_points()[0]

    def delete_point(self, point_id: str) -> None:
        self.backend.delete(f"points/{point_id}")
