"""Garbage collection: mark what the recovery points use, then sweep what nothing uses.

Safe while backups run, in the manner of Proxmox Backup Server's mark-and-sweep with a
grace period, adapted to packs:

1. **Mark**: every chunk and block record reachable from a committed point is live.
2. **Plan**: packs older than the grace period whose blobs are all dead, or dead beyond
   ``repack_threshold`` of their bytes, become candidates; they are written to
   ``gc/pending``. From then on every backup that opens the vault treats the chunks of
   those packs as absent (it stores them again rather than referencing them), so nothing
   new can come to depend on them. Packs younger than the grace period are never
   candidates: they may belong to a backup that has not committed its point yet.
3. **Sweep**, only when no backup or restore holds a live lock (one that started before
   the plan may already reference a doomed chunk): live blobs of candidate packs are copied
   as they are (still sealed) into new packs, the index is rewritten as one object without
   the candidates, the old index objects go, then the candidates. An interrupted sweep
   leaves them unindexed but announced: no backup adopts them, the next collection does
   and finishes. Otherwise the sweep is left for the next run.

A blob is live when one of its chunks is live *and* the index locates that chunk in this
blob: a second copy of a chunk (written by two concurrent backups) is garbage.

A store that retains objects may refuse a delete (``ObjectRetained``: a container-level
policy, a legal hold, a WORM store without versions); S3 Object Lock and Azure's
version-level immutability do not (a delete only hides the retained version). A refused
pack stays, unindexed (its live chunks were copied) and still announced in ``gc/pending``
(no backup reuses or adopts it), and is named in ``retained``; the next collection adopts it
again and retries. A refused index object keeps the packs it names. Nothing is lost either
way; the collection goes on.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from vmvault.backends.base import ObjectRetained, innermost
from vmvault.engine.blobs import Compressor, encode_blob
from vmvault.errors import CorruptObject, ObjectMissing, PointNotFound, VmvaultError
from vmvault.vault.format import ZERO_ID, PackEntry
from vmvault.vault.locks import live_locks
from vmvault.vault.packs import PackWriter, pack_key
from vmvault.vault.vault import Vault

DEFAULT_GRACE = 3600.0
DEFAULT_REPACK_THRESHOLD = 0.25


@dataclass
class GcReport:
    points: int = 0
    live_chunks: int = 0
    packs: int = 0
    candidates: int = 0
    deleted_packs: int = 0
    repacked_packs: int = 0
    bytes_freed: int = 0
    manifests_deleted: int = 0
    deferred: str | None = None  # why the sweep did not run
    damaged_points: list[str] = field(default_factory=list)  # skipped under --force
    damaged: list[str] = field(default_factory=list)  # every damaged object skipped
    problems: list[str] = field(default_factory=list)
    retained: list[str] = field(default_factory=list)  # garbage the store would not delete yet
    # temporary files of writes a crash interrupted, older than the grace period: removed
    leftovers_removed: list[str] = field(default_factory=list)
    # What the maintenance did to the store's retention (vault/store_retention.py), if any.
    store_retention: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _delete(vault: Vault, key: str, report: GcReport) -> bool:
    """Delete one object; False (and named in the report) when the store still retains it."""
    try:
        vault.backend.delete(key)
    except ObjectRetained as exc:
        report.retained.append(f"{key}: {exc.message}")
        return False
    return True


class DamagedVault(VmvaultError):
    """GC cannot tell what a damaged point or record used, so it frees nothing."""

    code = "vault_damaged"


def mark(
    vault: Vault, *, force: bool = False
) -> tuple[set[bytes], set[str], int, list[tuple[str, str]]]:
    """Live chunk and record ids and live manifest ids of every committed point, the number
    of points, and the damaged objects (points, manifests, records) whose use is unknown.

    Without ``force`` a damaged object stops the collection: what only it referenced must
    not become garbage behind the operator's back (it may be repaired from a copy).
    """
    live: set[bytes] = set()
    manifests: set[str] = set()
    damaged: list[tuple[str, str]] = []  # (kind, name)

    def unknown(kind: str, name: str, exc: Exception) -> None:
        if not force:
            raise DamagedVault(
                f"cannot collect garbage: {kind} {name} is damaged ({exc}); what only it "
                "uses cannot be told from garbage: forget it, or run `vmvault gc --force` "
                "to free it too"
            )
        damaged.append((kind, name))

    point_ids = vault.point_ids()
    for point_id in point_ids:
        try:
            point = vault.get_point(point_id)
        except PointNotFound:
            continue
        except (CorruptObject, ObjectMissing) as exc:
            unknown("recovery point", point_id, exc)
            continue
        for disk in point["disks"]:
            manifests.add(disk["manifest"])
            try:
                manifest = vault.get_manifest(disk["manifest"])
            except (CorruptObject, ObjectMissing) as exc:
                unknown("manifest", f"{disk['manifest'][:16]} of {point_id}", exc)
                continue
            todo = [r for r in dict.fromkeys(manifest.records) if r != ZERO_ID and r not in live]
            live.update(todo)
            for record_id, chunks in vault.records(todo).items():
                if isinstance(chunks, Exception):
                    unknown("block record", f"{record_id.hex()[:16]} of {point_id}", chunks)
                    continue
                live.update(c for c in chunks if c != ZERO_ID)
    return live, manifests, len(point_ids), damaged


def _pack_entries(vault: Vault) -> tuple[dict[bytes, list[PackEntry]], list[str], set[str]]:
    """Every entry of every indexed pack (copies included), the index objects listed, and
    those that did not read."""
    entries: dict[bytes, list[PackEntry]] = {}
    keys = list(vault.backend.list("index/"))
    unreadable = set()
    for key in keys:
        try:
            objects = vault.read_index_object(key)
        except ObjectMissing:
            continue  # deleted since the listing
        except CorruptObject:
            # Skipped, and replaced at the sweep: the packs it named were adopted as
            # orphans from their own headers when this collection began.
            unreadable.add(key)
            continue
        for pack_id, pack_entries in objects:
            entries.setdefault(pack_id, []).extend(pack_entries)
    return entries, keys, unreadable


def _blobs(entries: list[PackEntry]) -> dict[int, list[PackEntry]]:
    blobs: dict[int, list[PackEntry]] = {}
    seen: set[tuple[bytes, int]] = set()
    for e in entries:
        if (e.chunk_id, e.offset) not in seen:  # the same pack indexed twice (adoption)
            seen.add((e.chunk_id, e.offset))
            blobs.setdefault(e.offset, []).append(e)
    return blobs


def _live_entries(
    vault: Vault, pack_id: bytes, blob: list[PackEntry], live: set[bytes]
) -> list[PackEntry]:
    """The blob's chunks a point uses *here* (the index's copy of a live chunk)."""
    kept = []
    for e in blob:
        if e.chunk_id in live:
            loc = vault.index.get(e.chunk_id)
            if loc is not None and loc.pack_id == pack_id and loc.offset == e.offset:
                kept.append(e)
    return kept


def _dead_bytes(vault: Vault, pack_id: bytes, blob: list[PackEntry], live: set[bytes]) -> float:
    """Stored bytes of the blob that hold no live chunk (pro rata of the raw sizes)."""
    raw = sum(e.raw_length for e in blob) or 1
    live_raw = sum(e.raw_length for e in _live_entries(vault, pack_id, blob, live))
    return blob[0].length * (raw - live_raw) / raw


def collect_garbage(
    vault: Vault,
    *,
    grace: float = DEFAULT_GRACE,
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD,
    now: float | None = None,
    force: bool = False,
) -> GcReport:
    now = time.time() if now is None else now
    report = GcReport()
    # What a killed writer left half-written is no object and nothing refers to it; one
    # untouched for the grace period has no writer left (a put rewrites it continuously).
    remove = getattr(innermost(vault.backend), "remove_leftovers", None)
    if remove is not None:
        report.leftovers_removed = remove(now - grace)
    # A crashed backup's packs are garbage too, once old enough; so are those a crashed
    # sweep (or a store that refused the delete) left unindexed, which it plans again.
    vault.adopt_orphan_packs(doomed=True)
    vault.load_index()
    live, live_manifests, report.points, damaged = mark(vault, force=force)
    report.damaged = [f"{kind} {name}" for kind, name in damaged]
    report.damaged_points = [name for kind, name in damaged if kind == "recovery point"]
    report.live_chunks = len(live)
    entries, index_keys, unreadable = _pack_entries(vault)
    if unreadable - set(vault.index_problems):
        # Damaged after this host's index absorbed it, so the opening did not see it: the
        # index is rebuilt without it, and the packs it named adopted from their headers.
        vault.forget_local_index()
        vault.load_index()
        vault.adopt_orphan_packs()
        entries, index_keys, unreadable = _pack_entries(vault)
    report.packs = len(entries)
    candidates: list[bytes] = []
    for pack_id, pack_entries in entries.items():
        try:
            if now - vault.backend.modified(pack_key(pack_id)) < grace:
                continue
        except ObjectMissing:
            # A lost pack: once no point uses what it held, it leaves the index (and
            # `check` stops naming it); while one does, that point stays damaged.
            blobs = _blobs(pack_entries)
            if any(_live_entries(vault, pack_id, b, live) for b in blobs.values()):
                report.problems.append(f"{pack_key(pack_id)} is indexed but missing")
            else:
                candidates.append(pack_id)
            continue
        blobs = _blobs(pack_entries)
        total = sum(b[0].length for b in blobs.values())
        dead = sum(_dead_bytes(vault, pack_id, b, live) for b in blobs.values())
        if pack_id in vault.damage.packs and dead < total:
            # Never repack a damaged pack: its blobs would be copied as they are and the
            # damage would hide in a pack nobody marked. It goes once backups have stored
            # again everything of it that points use.
            report.problems.append(f"{pack_key(pack_id)} is marked damaged and still used")
            continue
        if dead and dead >= repack_threshold * total:
            candidates.append(pack_id)
    report.candidates = len(candidates)
    for pack_id in vault.damage.packs - set(entries) - (vault.listed_packs or set()):
        vault.damage.clear(pack_id)  # the marked pack is gone from the vault and its index
    # A damaged index object is replaced by the sweep's rewrite of the index (its packs
    # were adopted from their own headers above), even when nothing else is garbage.
    if not candidates and not vault.index_problems:
        vault.set_gc_pending(None)
        report.manifests_deleted = _drop_manifests(vault, live_manifests, now, grace, report)
        return report
    # Announce first, then look for holders: a backup that starts after this line reads
    # the announcement and will not reference the candidates' chunks.
    if candidates:
        vault.set_gc_pending({"created": now, "packs": [p.hex() for p in candidates]})
    holders = live_locks(vault.backend)
    if holders:
        kinds = ", ".join(sorted({h.kind for h in holders}))
        report.deferred = f"{len(holders)} job(s) running ({kinds}): sweep left for the next run"
        return report
    kept = _sweep(vault, candidates, entries, index_keys, live, report)
    # Packs the store would not delete stay announced: no backup reuses or adopts them, and
    # the next collection (which adopts them itself) tries again.
    vault.set_gc_pending({"created": now, "packs": [p.hex() for p in kept]} if kept else None)
    report.manifests_deleted = _drop_manifests(vault, live_manifests, now, grace, report)
    return report


def _sweep(
    vault: Vault,
    candidates: list[bytes],
    entries: dict[bytes, list[PackEntry]],
    index_keys: list[str],
    live: set[bytes],
    report: GcReport,
) -> list[bytes]:
    """Copy what is live out of the candidates, rewrite the index, delete the candidates;
    returns those the store would not let go."""
    writer = vault.pack_writer()
    compressor = Compressor(vault.config.compression_level)
    moved: dict[bytes, bool] = {}
    try:
        for pack_id in candidates:
            moved[pack_id] = _move_live_blobs(
                vault, writer, compressor, pack_id, entries[pack_id], live
            )
        writer.flush()  # the copies are durable and indexed before any original goes
    finally:
        writer.close()
    # One index object for what remains (the writer indexed its new packs already), then
    # the index objects read at the start go, then the candidates. Objects written
    # meanwhile are left alone. A crash before the candidates go leaves them unindexed:
    # orphans that gc/pending still excludes from reuse, collected by the next run.
    doomed = set(candidates)
    remaining = [
        (p, list({(e.chunk_id, e.offset): e for e in es}.values()))
        for p, es in entries.items()
        if p not in doomed
    ]
    if remaining:
        vault.write_index_object(remaining)
    named: set[bytes] = set()  # packs an index object the store kept still names
    for key in index_keys:
        if not _delete(vault, key, report):
            with contextlib.suppress(CorruptObject, ObjectMissing):
                named.update(p for p, _ in vault.read_index_object(key))
    kept: list[bytes] = []
    for pack_id in candidates:
        key = pack_key(pack_id)
        if pack_id in named:
            # Kept so that no index object ever names a pack that is gone (`check` would
            # call it lost); it goes with that index object, when the store lets it.
            report.retained.append(f"{key}: named by an index object the store retains")
            kept.append(pack_id)
            continue
        size = 0
        with contextlib.suppress(ObjectMissing):
            size = vault.backend.size(key)
        if not _delete(vault, key, report):
            kept.append(pack_id)  # still there, still readable: a later collection retries
            continue
        report.bytes_freed += size
        if moved[pack_id]:
            report.repacked_packs += 1
        else:
            report.deleted_packs += 1
        if pack_id in vault.damage.packs:
            vault.damage.clear(pack_id)
    vault.load_index()
    return kept


def _move_live_blobs(
    vault: Vault,
    writer: PackWriter,
    compressor: Compressor,
    pack_id: bytes,
    pack_entries: list[PackEntry],
    live: set[bytes],
) -> bool:
    """Copy what is live in a pack into new packs; False when nothing was."""
    blobs = _blobs(pack_entries)
    keep = {offset: _live_entries(vault, pack_id, b, live) for offset, b in blobs.items()}
    if not any(keep.values()):
        return False
    data = vault.backend.get(pack_key(pack_id))
    for offset, kept in keep.items():
        if not kept:
            continue
        blob = blobs[offset]
        sealed = data[offset : offset + blob[0].length]
        if len(kept) == len(blob):  # wholly live: moved as it is, still sealed
            ordered = sorted(blob, key=lambda e: e.start)
            writer.add(blob[0].kind, [sealed], [(e.chunk_id, e.raw_length) for e in ordered])
            continue
        # Partly live: open it and seal only the live chunks again, as a new blob.
        what = f"blob at {offset} of {pack_key(pack_id)}"
        plain = memoryview(vault.open_blob(sealed, what))
        ordered = sorted(kept, key=lambda e: e.start)
        pieces = [plain[e.start : e.start + e.raw_length] for e in ordered]
        encoding, payload = encode_blob(pieces, True, compressor)
        sealed_parts = vault.seal_blob(encoding, payload)
        writer.add(blob[0].kind, sealed_parts, [(e.chunk_id, e.raw_length) for e in ordered])
    return True


def _drop_manifests(
    vault: Vault, live: set[str], now: float, grace: float, report: GcReport
) -> int:
    """Manifests no point names (an interrupted commit, or deleted points), once old."""
    dropped = 0
    for key in list(vault.backend.list("manifests/")):
        if key.split("/", 1)[1] in live:
            continue
        try:
            if now - vault.backend.modified(key) < grace:
                continue
        except ObjectMissing:
            continue
        if _delete(vault, key, report):
            dropped += 1
    return dropped
