"""The backup pipeline: read -> hash -> compare -> compress -> encrypt -> pack -> commit.

A disk is cut into blocks (4 MiB) of chunks (64 KiB). Each block is one task for a thread
pool: read only the chunks that hold data (holes are never read), drop all-zero chunks,
hash the rest with keyed BLAKE3, keep the chunks whose id matches the parent point's record
for that block, and compress + encrypt + pack the chunks the vault does not have. The
block's list of chunk ids becomes a record; an unchanged block reuses its parent's record
id, so an incremental backup writes roughly the changed chunks and nothing else.

Memory is bounded: at most ``2 * workers`` blocks are in flight (one block buffer each),
plus the pack writer's open packs and at most ``max_pending`` sealed ones (16 MiB each; 3
for a directory vault, 6 for S3: vmvault.vault.packs): about 100 MiB with 2 workers and a
directory vault (~100 MiB more with S3's 4 uploaders: docs/ARCHITECTURE.md), whatever the
disk size, plus the chunk index (see vmvault.vault.index).
"""

from __future__ import annotations

import bisect
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from vmvault.disks.source import DiskSource
from vmvault.engine.blobs import Compressor, compressible, encode_blob
from vmvault.engine.blocks import map_blocks
from vmvault.engine.parents import parent_manifests
from vmvault.engine.progress import (
    ProgressCallback,
    ProgressEvent,
    interrupt_check,
    no_progress,
)
from vmvault.engine.ranges import merge_ranges, runs_of
from vmvault.engine.throttle import INTERRUPT_EVERY, Bucket
from vmvault.errors import CorruptObject, UsageError
from vmvault.model.point import (
    ConsistencyDoc,
    DiskEntry,
    DiskStatsDoc,
    ExcludedDisk,
    RecoveryPoint,
)
from vmvault.vault.config import new_point_id
from vmvault.vault.format import KIND_DATA, ZERO_ID, DiskManifest
from vmvault.vault.packs import PackWriter
from vmvault.vault.vault import Vault


@dataclass
class DiskStats:
    """What a disk's backup did; bytes are logical (uncompressed) unless named ``stored``."""

    size: int = 0
    allocated: int = 0  # bytes in data ranges (not holes)
    read: int = 0  # bytes read from the disk
    zero: int = 0  # read but all zero: skipped
    unchanged: int = 0  # same chunk as the parent point
    deduplicated: int = 0  # changed, but the vault already had the chunk
    skipped: int = 0  # not read at all: unchanged according to change tracking
    new: int = 0  # chunks stored by this backup (before compression)
    stored: int = 0  # bytes those chunks take in the vault (compressed + encrypted)
    records_new: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return self.deduplicated + self.new

    def add(self, other: DiskStats) -> None:
        for name in self.__dataclass_fields__:
            if name not in ("size", "seconds"):
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> DiskStatsDoc:
        return cast("DiskStatsDoc", {**asdict(self), "changed": self.changed})


@dataclass
class DiskInput:
    """A disk to back up: its name within the VM, the open source, what it is to the VM."""

    name: str
    source: DiskSource
    role: str = "data"
    format: str = "raw"
    format_from: str | None = None  # how ``format`` was settled: detected, declared, forced
    # Byte ranges that may differ from the parent point (a dirty bitmap). None: unknown,
    # read and hash everything. Only a hint: it is used only when the parent is known.
    changed: list[tuple[int, int]] | None = None
    # The source holds only the changed ranges (a QEMU incremental image): reading outside
    # them would store zeros, so the engine refuses to back it up without a usable parent.
    changes_only: bool = False
    # Shared budgets (a storage pool's egress bytes and requests per second), and the
    # semaphore of the pool's disks in flight; the engine honours them, the caller owns them.
    byte_buckets: Sequence[Bucket] = ()
    request_buckets: Sequence[Bucket] = ()
    slot: threading.BoundedSemaphore | None = None


@dataclass
class BackupResult:
    point: RecoveryPoint
    stats: dict[str, DiskStats] = field(default_factory=dict)


class DiskBackup:
    """Backs up one disk into a shared pack writer, optionally against a parent manifest."""

    def __init__(
        self,
        vault: Vault,
        writer: PackWriter,
        disk: DiskInput,
        parent: DiskManifest | None,
        executor: ThreadPoolExecutor,
        workers: int,
        *,
        progress: ProgressCallback = no_progress,
    ) -> None:
        self.vault = vault
        self.writer = writer
        self.disk = disk
        self.source = disk.source
        self.chunk = vault.config.chunk_size
        self.block = vault.config.block_size
        if parent is not None and (parent.chunk_size, parent.block_size) != (
            self.chunk,
            self.block,
        ):
            parent = None  # a parent cut differently cannot be compared block by block
        self.parent = parent
        self.executor = executor
        self.max_inflight = 2 * workers
        self.buffers: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(self.max_inflight):
            self.buffers.put(bytearray(self.block))
        self.zero = bytes(self.chunk)
        self.compressor = Compressor(vault.config.compression_level)
        self.byte_buckets = list(disk.byte_buckets)
        self.request_buckets = list(disk.request_buckets)
        self.progress = progress
        self.interrupt = interrupt_check(progress)
        if disk.changes_only and (parent is None or disk.changed is None):
            raise UsageError(
                f"disk {disk.name}: the snapshot holds only changes, but there is no parent "
                "point to take the rest from: run a full backup"
            )
        self.changed = merge_ranges(disk.changed) if disk.changed is not None and parent else None

    def run(self) -> tuple[DiskManifest, DiskStats]:
        slot = self.disk.slot
        if slot is None:
            return self._run()
        while not slot.acquire(timeout=INTERRUPT_EVERY):  # a free place among the pool's
            self.interrupt()  # disks in flight; a cancel ends the wait
        try:
            return self._run()
        finally:
            slot.release()

    def _run(self) -> tuple[DiskManifest, DiskStats]:
        started = time.perf_counter()
        size = self.source.size
        blocks = -(-size // self.block)
        records: list[bytes] = [ZERO_ID] * blocks
        total = DiskStats(size=size)

        def collect(index: int, result: tuple[bytes, DiskStats]) -> None:
            records[index], stats = result
            total.add(stats)
            done = min(size, (index + 1) * self.block)
            self.progress(ProgressEvent("backup", self.disk.name, done, size, read=total.read))

        map_blocks(self.executor, blocks, self._block, self.max_inflight, collect)
        total.seconds = time.perf_counter() - started
        manifest = DiskManifest(size, self.block, self.chunk, records)
        return manifest, total

    def _store(self, new: Sequence[tuple[bytes, memoryview]], stats: DiskStats) -> None:
        """Pack the block's new chunks: runs of compressible ones share one zstd stream."""
        flags = [compressible(piece, self.compressor) for _, piece in new]
        for lo, hi, compress in runs_of(flags):
            run = new[lo:hi]
            encoding, payload = encode_blob([p for _, p in run], compress, self.compressor)
            sealed = self.vault.seal_blob(encoding, payload)
            self.writer.add(KIND_DATA, sealed, [(cid, len(p)) for cid, p in run])
            stats.stored += sum(len(p) for p in sealed)

    def _parent_chunks(self, b: int) -> tuple[bytes, list[bytes] | None, bool]:
        """The parent's record id and chunk ids for block ``b``, and whether they are known.

        An all-zero parent block is known (its chunks are all ZERO_ID). A damaged parent
        record is not: that block is then read and hashed in full, and change hints
        cannot be used for it.
        """
        if self.parent is None or b >= len(self.parent.records):
            return ZERO_ID, None, False
        record_id = self.parent.records[b]
        if record_id == ZERO_ID:
            return ZERO_ID, None, True
        found = self.vault.records([record_id])[record_id]
        if isinstance(found, Exception):
            # A damaged parent is no reason to fail tonight's backup: compare against
            # nothing, so every chunk of this block is checked against the index again.
            return ZERO_ID, None, False
        return record_id, found, True

    def _block(self, b: int) -> tuple[bytes, DiskStats]:
        self.interrupt()  # a cancelled or signalled job stops at its next block
        stats = DiskStats()
        chunk = self.chunk
        start = b * self.block
        length = min(self.block, self.source.size - start)
        count = -(-length // chunk)
        inherit: frozenset[int] = frozenset()
        parent_record, parent_ids, parent_known = self._parent_chunks(b)
        if self.changed is not None and not parent_known and self.disk.changes_only:
            raise CorruptObject(
                f"disk {self.disk.name}: block {b} of the parent point is unreadable and the "
                "snapshot holds only the changes since it: run a full backup"
            )
        if self.changed is not None and parent_known:
            changed = self._changed_chunks(start, length)
            lost = self._lost_chunks(parent_ids) - changed
            if lost and self.disk.changes_only:
                raise CorruptObject(
                    f"disk {self.disk.name}: chunks of block {b} of the parent point are "
                    "missing from the vault and the snapshot holds only the changes since "
                    "it: run a full backup"
                )
            dirty = changed | lost
            if not dirty:
                stats.skipped += length
                return parent_record, stats
            inherit = frozenset(range(count)) - dirty
        ranges = self.source.data_ranges(start, start + length)
        has_data = [False] * count
        for lo, hi in ranges:
            stats.allocated += hi - lo
            for c in range((lo - start) // chunk, -(-(hi - start) // chunk)):
                has_data[c] = c not in inherit
        stats.skipped += sum(min(chunk, length - c * chunk) for c in inherit)
        if not any(has_data) and not inherit:
            return ZERO_ID, stats
        buffer = self.buffers.get()
        try:
            return self._chunks(
                buffer, start, length, has_data, inherit, parent_record, parent_ids, stats
            )
        finally:
            self.buffers.put(buffer)

    def _lost_chunks(self, parent_ids: list[bytes] | None) -> frozenset[int]:
        """Indices of the parent's chunks that live in no pack the vault has (a lost pack):
        they must be read and stored again, never inherited."""
        if not parent_ids:
            return frozenset()
        available = self.vault.index.available
        return frozenset(
            c for c, cid in enumerate(parent_ids) if cid != ZERO_ID and not available(cid)
        )

    def _changed_chunks(self, start: int, length: int) -> frozenset[int]:
        """Indices of this block's chunks that touch a changed range."""
        assert self.changed is not None
        end = start + length
        hit: set[int] = set()
        i = bisect.bisect_right(self.changed, (start, end)) - 1
        for lo, hi in self.changed[max(i, 0) :]:
            if lo >= end:
                break
            if hi > start:
                first = (max(lo, start) - start) // self.chunk
                last = -(-(min(hi, end) - start) // self.chunk)
                hit.update(range(first, last))
        return frozenset(hit)

    def _chunks(
        self,
        buffer: bytearray,
        start: int,
        length: int,
        has_data: Sequence[bool],
        inherit: frozenset[int],
        parent_record: bytes,
        parent_ids: list[bytes] | None,
        stats: DiskStats,
    ) -> tuple[bytes, DiskStats]:
        chunk = self.chunk
        view = memoryview(buffer)
        c = 0
        while c < len(has_data):  # read runs of chunks with data in one call each
            if not has_data[c]:
                c += 1
                continue
            run = c
            while run < len(has_data) and has_data[run]:
                run += 1
            lo, hi = c * chunk, min(run * chunk, length)
            for bucket in self.byte_buckets:
                bucket.consume(hi - lo, self.interrupt)
            for bucket in self.request_buckets:
                bucket.consume(1, self.interrupt)
            self.source.read_into(view[lo:hi], start + lo)
            stats.read += hi - lo
            c = run
        ids: list[bytes] = []
        new: list[tuple[bytes, memoryview]] = []
        keys = self.vault.keys
        for c, data in enumerate(has_data):
            lo = c * chunk
            n = min(chunk, length - lo)
            if c in inherit:  # unchanged per change tracking: the parent's chunk stands
                ids.append(parent_ids[c] if parent_ids and c < len(parent_ids) else ZERO_ID)
                continue
            if not data:
                ids.append(ZERO_ID)
                continue
            if buffer.startswith(self.zero[:n] if n < chunk else self.zero, lo):
                ids.append(ZERO_ID)
                stats.zero += n
                continue
            piece = view[lo : lo + n]
            cid = keys.chunk_id(piece)
            ids.append(cid)
            if (
                parent_ids is not None
                and c < len(parent_ids)
                and parent_ids[c] == cid
                and self.vault.index.available(cid)  # never reference a lost chunk
            ):
                stats.unchanged += n
            elif self.writer.claim(cid):
                new.append((cid, piece))
                stats.new += n
            else:
                stats.deduplicated += n
        self._store(new, stats)
        if all(i == ZERO_ID for i in ids):
            return ZERO_ID, stats
        if parent_ids == ids:
            return parent_record, stats
        stats.records_new += 1
        return self.vault.store_record(self.writer, ids), stats


def backup(
    vault: Vault,
    vm: str,
    disks: Sequence[DiskInput],
    *,
    workers: int | None = None,
    full: bool = False,
    consistency: ConsistencyDoc | None = None,
    excluded: Sequence[ExcludedDisk] = (),
    vm_config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    progress: ProgressCallback = no_progress,
) -> BackupResult:
    """Back up ``disks`` of ``vm``, all in parallel, into one recovery point and commit it.

    The point becomes visible only after every pack, index object and manifest it needs is
    durable: it is written last. Until then a crash leaves only unreferenced packs, which
    the next run adopts and reuses.
    """
    names = [d.name for d in disks]
    if not disks or len(set(names)) != len(names):
        raise UsageError("give at least one disk, each with a distinct name")
    workers = workers or os.cpu_count() or 2
    created = datetime.now(UTC)
    vault.adopt_orphan_packs()
    parents = {} if full else parent_manifests(vault, vm, names)
    writer = vault.pack_writer()
    # Disks share the worker pool; each keeps a share of the in-flight bound, so memory
    # stays flat however many disks a VM has.
    per_disk = max(1, workers // len(disks))
    try:
        with (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backup") as executor,
            ThreadPoolExecutor(max_workers=len(disks), thread_name_prefix="disk") as disk_pool,
        ):
            jobs = [
                DiskBackup(
                    vault,
                    writer,
                    disk,
                    parents[disk.name][1] if disk.name in parents else None,
                    executor,
                    per_disk,
                    progress=progress,
                )
                for disk in disks
            ]
            outcomes = [f.result() for f in [disk_pool.submit(job.run) for job in jobs]]
        writer.flush()  # packs and index durable before anything refers to them
    finally:
        writer.close()
    disk_docs: list[DiskEntry] = []
    for disk, (manifest, stats) in zip(disks, outcomes, strict=True):
        parent_id = parents[disk.name][0] if disk.name in parents else None
        entry: DiskEntry = {
            "name": disk.name,
            "role": disk.role,
            "format": disk.format,
            "source": disk.source.path,
            "size": manifest.size,
            "parent": parent_id,
            "manifest": vault.put_manifest(manifest),
            "stats": stats.to_dict(),
        }
        if disk.format_from:
            entry["format_from"] = disk.format_from
        disk_docs.append(entry)
    parent_ids = {p for p, _ in parents.values()}
    point: RecoveryPoint = {
        "id": new_point_id(created),
        "vm": vm,
        "created": created.isoformat(timespec="microseconds"),
        "completed": datetime.now(UTC).isoformat(timespec="microseconds"),
        "parent": max(parent_ids) if parent_ids else None,
        "type": "incremental" if parent_ids else "full",
        "consistency": consistency or {"level": "crash", "reason": "disk images read as they are"},
        "disks": disk_docs,
        "excluded": list(excluded),
        "vm_config": vm_config or {},
        "meta": meta or {},
    }
    vault.put_point(point)
    return BackupResult(point, stats={d.name: s for d, (_, s) in zip(disks, outcomes, strict=True)})
