"""Replication: copy the recovery points a copy of the vault lacks, still sealed.

A copy shares the vault's master keys (its own passphrase wraps them), so packs, manifests
and points cross as the bytes they are: nothing is decrypted and encrypted again. Only block
records are opened, to learn which chunks (and so which packs) a point needs.

Order, so a copy is never inconsistent whatever stops the run (a crash, a kill, an outage):
for each point, oldest first, the packs it needs that the copy lacks (each checked against
its name, the BLAKE3 of its bytes, and its size at the copy), then an index object for
them, then its manifests, then a sampled read-back through the copy's own keys, and the
point object **last**. A point is in the copy whole or not at all; packs of an interrupted
run are adopted by the next one (``Vault.adopt_orphan_packs``), so it resumes where it
stopped instead of starting again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vmvault.backends.base import put_new
from vmvault.engine.progress import ProgressCallback, ProgressEvent, interrupt_check, no_progress
from vmvault.errors import CorruptObject, ObjectMissing, VmvaultError
from vmvault.model.point import RecoveryPoint
from vmvault.vault.format import ZERO_ID, PackEntry
from vmvault.vault.packs import pack_key
from vmvault.vault.vault import Vault

DEFAULT_SAMPLE = 64  # chunks of each copied point read back through the copy
DEFAULT_WORKERS = 4  # packs in flight at once (each held whole in memory: ~16 MiB)


class ReplicationFailed(VmvaultError):
    """What was copied does not read back from the copy as it left the vault."""

    code = "replication_failed"


@dataclass
class ReplicationReport:
    source: str
    destination: str
    copied: list[str] = field(default_factory=list)  # point ids, oldest first
    present: int = 0  # points the copy had already
    skipped: dict[str, str] = field(default_factory=dict)  # point id -> why it was not copied
    packs: int = 0
    bytes: int = 0  # of packs and objects sent to the copy
    objects: int = 0  # manifests, points and index objects written
    adopted: int = 0  # packs of an interrupted run indexed again
    verified_chunks: int = 0
    seconds: float = 0.0
    retention: dict[str, Any] | None = None  # the copy's own, when it was applied after

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "copied": self.copied,
            "present": self.present,
            "skipped": self.skipped,
            "packs": self.packs,
            "bytes": self.bytes,
            "objects": self.objects,
            "adopted": self.adopted,
            "verified_chunks": self.verified_chunks,
            "seconds": round(self.seconds, 3),
            "retention": self.retention,
        }


@dataclass
class _Plan:
    """What one point needs in the copy."""

    manifests: list[str]
    chunks: list[bytes]  # records and data chunks, ZERO_ID left out
    packs: set[bytes]  # of the vault, holding chunks the copy lacks


def replicate(
    source: Vault,
    copy: Vault,
    *,
    points: Iterable[RecoveryPoint] | None = None,
    exclude: Iterable[str] = (),
    sample: int = DEFAULT_SAMPLE,
    workers: int = DEFAULT_WORKERS,
    progress: ProgressCallback = no_progress,
    rng: random.Random | None = None,
) -> ReplicationReport:
    """Copy into ``copy`` every point of ``points`` (default: all readable points of
    ``source``) that it lacks, except the ids in ``exclude`` (points the copy's own
    retention removed). Both vaults must have their index loaded and be held under locks.

    A point damaged in the source (unreadable, or naming chunks the source cannot give)
    is skipped and named in the report; the others are still copied."""
    started = time.monotonic()
    check = interrupt_check(progress)
    rng = rng or random.Random()
    report = ReplicationReport(source.backend.describe(), copy.backend.describe())
    report.adopted = copy.adopt_orphan_packs()
    if points is None:
        readable, damaged = source.read_points()
        report.skipped.update({pid: exc.message for pid, exc in damaged.items()})
        points = readable
    have = set(copy.point_ids())
    skip = set(exclude)
    todo = []
    for point in points:
        if point["id"] in have:
            report.present += 1
        elif point["id"] not in skip:
            todo.append(point)
    plans: dict[str, _Plan] = {}
    for point in todo:
        try:
            plans[point["id"]] = _plan(source, copy, point)
        except (CorruptObject, ObjectMissing) as exc:
            report.skipped[point["id"]] = exc.message
    total = _pack_bytes(source, {p for plan in plans.values() for p in plan.packs})
    sent = 0
    for point in todo:
        plan = plans.get(point["id"])
        if plan is None:
            continue
        check()
        # Packs another point of this run already sent are in the copy's index now.
        plan.packs = {p for p in plan.packs if not copy.index.has_pack(p)}
        try:
            copied = _copy_packs(source, copy, sorted(plan.packs), workers, check)
        except (CorruptObject, ObjectMissing) as exc:
            # A pack of the vault is damaged or gone: this point cannot cross whole. What
            # its other packs sent is adopted by the next run; the other points go on.
            report.skipped[point["id"]] = exc.message
            continue
        if copied:
            copy.write_index_object([(pack_id, entries) for pack_id, entries, _ in copied])
            report.objects += 1
            for pack_id, entries, size in copied:
                copy.index.add_pack(pack_id, entries)
                report.packs += 1
                report.bytes += size
                sent += size
        for manifest_id in plan.manifests:
            report.bytes += _copy_object(source, copy, f"manifests/{manifest_id}")
            report.objects += 1
        report.verified_chunks += _read_back(copy, plan, sample, rng)
        key = f"points/{point['id']}"
        sealed = source.backend.get(key)
        try:
            put_new(copy.backend, key, sealed)  # last: the point exists whole or not at all
        except VmvaultError as exc:
            if exc.code != "object_exists":  # a replication running beside this one
                raise
        copy.get_point(point["id"])  # it opens with the copy's keys
        report.objects += 1
        report.bytes += len(sealed)
        report.copied.append(point["id"])
        progress(ProgressEvent("replicate", report.destination, sent, total))
    report.seconds = time.monotonic() - started
    return report


def _plan(source: Vault, copy: Vault, point: RecoveryPoint) -> _Plan:
    """The manifests, chunks and packs ``point`` needs (raises if the source lacks any)."""
    manifests = [disk["manifest"] for disk in point["disks"]]
    records: set[bytes] = set()
    for manifest_id in manifests:
        records.update(r for r in source.get_manifest(manifest_id).records if r != ZERO_ID)
    chunks = set(records)
    for record_id, ids in source.records(records).items():
        if isinstance(ids, Exception):
            raise CorruptObject(f"block record {record_id.hex()[:16]}: {ids}")
        chunks.update(c for c in ids if c != ZERO_ID)
    packs: set[bytes] = set()
    for chunk_id in chunks:
        if copy.index.claimable(chunk_id):  # not in a pack the copy's GC is removing
            continue
        location = source.index.get(chunk_id)
        if location is None or not source.index.available(chunk_id):
            raise ObjectMissing(f"chunk {chunk_id.hex()[:16]} is missing from the vault")
        packs.add(location.pack_id)
    return _Plan(manifests, sorted(chunks), packs)


def _pack_bytes(source: Vault, packs: set[bytes]) -> int:
    """An estimate of the packs' sizes from the index (the last blob's end), no requests."""
    ends: dict[bytes, int] = dict.fromkeys(packs, 0)
    for _, location in source.index.items():
        if location.pack_id in ends:
            ends[location.pack_id] = max(ends[location.pack_id], location.offset + location.length)
    return sum(ends.values())


def _copy_packs(
    source: Vault,
    copy: Vault,
    packs: list[bytes],
    workers: int,
    check: Callable[[], None],
) -> list[tuple[bytes, list[PackEntry], int]]:
    def one(pack_id: bytes) -> tuple[bytes, list[PackEntry], int]:
        check()
        key = pack_key(pack_id)
        data = source.backend.get(key)
        # Checked before it leaves: a pack damaged in the vault must not become the copy's.
        try:
            entries = source.pack_entries(pack_id, data)
        except CorruptObject as exc:
            source.damage.mark(pack_id, exc.message)  # as any read that finds it does
            raise
        try:
            put_new(copy.backend, key, data)
        except VmvaultError as exc:
            if exc.code != "object_exists":  # sent by a run that died before indexing it
                raise
        stored = copy.backend.size(key)
        if stored != len(data):
            raise ReplicationFailed(f"{key} is {stored} bytes in the copy, {len(data)} sent")
        return pack_id, entries, len(data)

    if not packs:
        return []
    with ThreadPoolExecutor(max(1, min(workers, len(packs))), "replicate") as pool:
        return list(pool.map(one, packs))


def _copy_object(source: Vault, copy: Vault, key: str) -> int:
    """Copy an immutable object unless the copy holds it whole already; bytes sent."""
    sealed = source.backend.get(key)
    try:
        if copy.backend.size(key) == len(sealed):
            return 0
    except ObjectMissing:
        pass
    copy.backend.put(key, sealed)
    return len(sealed)


def _read_back(copy: Vault, plan: _Plan, sample: int, rng: random.Random) -> int:
    """Open the point's manifests and a sample of its chunks through the copy: its keys,
    its index and its objects must give back what the vault holds (re-hashed on read)."""
    for manifest_id in plan.manifests:
        copy.get_manifest(manifest_id)
    chosen = plan.chunks if len(plan.chunks) <= sample else rng.sample(plan.chunks, sample)
    for chunk_id, result in copy.fetch(chosen).items():
        if isinstance(result, Exception):
            raise ReplicationFailed(
                f"chunk {chunk_id.hex()[:16]} does not read back from the copy: {result}"
            )
    return len(chosen)
