"""Chunks in and out of a vault's packs: reading chunks back (ranged reads of their packs,
blobs authenticated, decompressed and every chunk re-hashed, damage marked per pack),
sealing blobs, and block records.

A part of ``Vault`` (vault/vault.py), apart because the restore and the backup's parent
records go through it and nothing else of the vault's life: ``Vault`` mixes it in and
provides the attributes declared here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from vmvault.backends.base import Backend
from vmvault.errors import CorruptObject, ObjectMissing
from vmvault.vault.config import VaultConfig
from vmvault.vault.crypto import Cipher, MasterKeys
from vmvault.vault.damage import DamageMarks
from vmvault.vault.format import (
    ENCODING_RAW,
    KIND_RECORD,
    ZERO_ID,
    blob_aad,
    decode_payload,
    decode_record,
    encode_record,
)
from vmvault.vault.index import ChunkIndex, Location
from vmvault.vault.packs import PackWriter, pack_key

# Ranges of one pack closer than this are fetched in one read (fewer requests).
COALESCE_GAP = 256 * 1024
# Record packs are kept whole in a local cache (backends/cache.py ``hold``) only in vaults
# whose packs are at most this large: the first use reads the whole pack into memory.
MAX_HELD_PACK_TARGET = 64 * 1024 * 1024


class ChunkIO:
    backend: Backend
    config: VaultConfig
    keys: MasterKeys
    cipher: Cipher
    index: ChunkIndex
    damage: DamageMarks

    def fetch(self, chunk_ids: Sequence[bytes]) -> dict[bytes, memoryview | Exception]:
        """Read, authenticate, decompress and re-hash chunks; errors are returned per chunk.

        Each blob is read and opened once however many of its chunks are wanted, and blobs
        of one pack that lie close together are fetched with one ranged read.
        """
        results: dict[bytes, memoryview | Exception] = {}
        blobs: dict[tuple[bytes, int], list[tuple[bytes, Location]]] = {}
        for cid in dict.fromkeys(chunk_ids):
            loc = self.index.get(cid)
            if loc is None:
                results[cid] = ObjectMissing(f"chunk {cid.hex()[:16]} is not in the vault's index")
            else:
                blobs.setdefault((loc.pack_id, loc.offset), []).append((cid, loc))
        order = sorted(blobs)
        i = 0
        while i < len(order):
            pack_id, start = order[i]
            end = start + blobs[order[i]][0][1].length
            j = i + 1
            while j < len(order) and order[j][0] == pack_id and order[j][1] - end <= COALESCE_GAP:
                end = max(end, order[j][1] + blobs[order[j]][0][1].length)
                j += 1
            group = order[i:j]
            try:
                data = self.backend.get(pack_key(pack_id), start, end - start)
            except (ObjectMissing, CorruptObject) as exc:
                self.damage.mark(pack_id, exc.message)
                for key in group:
                    results.update((cid, exc) for cid, _ in blobs[key])
            else:
                view = memoryview(data)
                for key in group:
                    members = blobs[key]
                    length = members[0][1].length
                    sealed = view[key[1] - start : key[1] - start + length]
                    self.open_chunks(pack_id, key[1], sealed, members, results)
            i = j
        return results

    def open_chunks(
        self,
        pack_id: bytes,
        offset: int,
        sealed: memoryview,
        members: Sequence[tuple[bytes, Location]],
        results: dict[bytes, memoryview | Exception],
    ) -> None:
        what = f"blob at {offset} of pack {pack_id.hex()[:16]}"
        try:
            plain = self.open_blob(sealed, what)
        except CorruptObject as exc:
            self.damage.mark(pack_id, exc.message)
            results.update((cid, exc) for cid, _ in members)
            return
        view = memoryview(plain)  # chunks are handed out as views: no copy per chunk
        for cid, loc in members:
            data = view[loc.start : loc.start + loc.raw_length]
            if len(data) != loc.raw_length or self.keys.chunk_id(data) != cid:
                mismatch = CorruptObject(
                    f"chunk {cid.hex()[:16]} in {what}: content does not match its checksum"
                )
                self.damage.mark(pack_id, mismatch.message)
                results[cid] = mismatch
            else:
                results[cid] = data

    def open_blob(self, sealed: memoryview | bytes, what: str) -> bytes:
        """Authenticate, decrypt and decompress one blob (a run of chunks)."""
        if not sealed:
            raise CorruptObject(f"{what}: empty blob")
        encoding = sealed[0]
        payload = self.cipher.open(sealed[1:], blob_aad(encoding), what)
        return decode_payload(encoding, payload, self.config.block_size + 4096, what)

    # -- block records ------------------------------------------------------------------

    def seal_blob(self, encoding: int, payload: bytes | memoryview) -> list[bytes]:
        """A blob as the parts to write one after the other: encoding + nonce, ciphertext."""
        nonce, ciphertext = self.cipher.seal_parts(payload, blob_aad(encoding))
        return [bytes((encoding,)) + nonce, ciphertext]

    def store_record(self, writer: PackWriter, chunk_ids: Sequence[bytes]) -> bytes:
        plain = encode_record(chunk_ids)
        record_id = self.keys.chunk_id(plain)
        if writer.claim(record_id):
            sealed = self.seal_blob(ENCODING_RAW, plain)
            writer.add(KIND_RECORD, sealed, [(record_id, len(plain))])
        return record_id

    def records(self, record_ids: Iterable[bytes]) -> dict[bytes, list[bytes] | Exception]:
        """Block records by id (small LRU-less cache: records are read once per block)."""
        wanted = [r for r in dict.fromkeys(record_ids) if r != ZERO_ID]
        self._hold_record_packs(wanted)
        out: dict[bytes, list[bytes] | Exception] = {}
        for rid, plain in self.fetch(wanted).items():
            if isinstance(plain, Exception):
                out[rid] = plain
            else:
                try:
                    out[rid] = decode_record(bytes(plain), f"record {rid.hex()[:16]}")
                except CorruptObject as exc:
                    out[rid] = exc
        return out

    def _hold_record_packs(self, record_ids: Sequence[bytes]) -> None:
        """With a local cache, keep the packs of these records whole (``hold``): a backup
        reads its parent's record of every block, one ranged GET each without it; with it,
        one GET per record pack the first time, none after.

        Only packs the store listed (``available``): a record of a pack the store lost
        must fail to read, as without a cache, so the block is read and recorded again."""
        hold: Callable[[str, int], bool] | None = getattr(self.backend, "hold", None)
        if hold is None or self.config.pack_target > MAX_HELD_PACK_TARGET:
            return
        packs = set()
        for rid in record_ids:
            loc = self.index.get(rid)
            if loc is not None and loc.kind == KIND_RECORD and self.index.available(rid):
                packs.add(loc.pack_id)
        # At most: the target, one more blob (a block and its sealing), the header (small
        # beside the blobs: 43 bytes per record of ~2 KiB), rounded up generously.
        bound = 2 * self.config.pack_target + self.config.block_size
        for pack_id in packs:
            hold(pack_key(pack_id), bound)
