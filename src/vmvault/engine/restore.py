"""Restore and verify: the backup road backwards.

Each block is a task: fetch its record, fetch its chunks (ranged reads coalesced per pack),
authenticate and re-hash every chunk, write the runs of chunks with one ``pwritev``. A
regular-file target is created sparse: all-zero chunks are never written and stay holes. A
block device gets explicit zeros, since its old contents are not known to be zero.

A damaged or missing chunk does not stop the others: the restore finishes everything it
can, then reports the byte ranges it could not restore (and fails unless asked to ignore
errors). ``verify`` is the same walk without a target.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import stat
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmvault.backends import directio
from vmvault.disks.qemu import create_image, fuse_export
from vmvault.engine.blocks import map_blocks
from vmvault.engine.progress import ProgressCallback, ProgressEvent, no_progress
from vmvault.engine.targets import restore_target, shown_path, target_failure
from vmvault.engine.throttle import Bucket
from vmvault.errors import PointNotFound, RestoreDamaged, UsageError
from vmvault.model.point import DiskEntry, RecoveryPoint
from vmvault.vault.format import ZERO_ID, DiskManifest
from vmvault.vault.vault import Vault

# ioctl _IO(0x12, 127): zero a byte range of a block device (linux/fs.h)
BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02  # linux/falloc.h
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """fallocate(PUNCH_HOLE | KEEP_SIZE) (os.posix_fallocate takes no mode); False where
    the file or device cannot."""
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    return int(_libc.fallocate(fd, mode, offset, length)) == 0


@dataclass
class Damage:
    start: int
    end: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "reason": self.reason}


@dataclass
class RestoreReport:
    disk: str
    size: int
    chunks: int = 0
    bytes_verified: int = 0  # non-zero bytes read back, authenticated and re-hashed
    bytes_written: int = 0
    damaged: list[Damage] = field(default_factory=list)
    seconds: float = 0.0
    source: str = "vault"  # or "instant": copied from a kept snapshot, checked chunk by chunk
    point: str = ""  # the recovery point and its VM, once the caller names them (``of``)
    vm: str = ""

    def of(self, point: str, vm: str) -> RestoreReport:
        """This report, naming the point and VM it restored from (a reader of a restore's
        output should not have to guess which point ``latest`` was)."""
        self.point, self.vm = point, vm
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "vm": self.vm,
            "disk": self.disk,
            "size": self.size,
            "chunks": self.chunks,
            "bytes_verified": self.bytes_verified,
            "bytes_written": self.bytes_written,
            "damaged": [d.to_dict() for d in merge_damage(self.damaged)],
            "seconds": round(self.seconds, 3),
            "source": self.source,
        }


def merge_damage(damage: Sequence[Damage]) -> list[Damage]:
    """Sort and join adjacent damaged ranges, so a report names each bad stretch once."""
    merged: list[Damage] = []
    for d in sorted(damage, key=lambda d: d.start):
        if merged and merged[-1].end >= d.start and merged[-1].reason == d.reason:
            merged[-1].end = max(merged[-1].end, d.end)
        else:
            merged.append(Damage(d.start, d.end, d.reason))
    return merged


class _Target:
    """Where restored bytes go: a sparse regular file or a block device."""

    def __init__(
        self, path: Path, size: int, *, sync: bool = False, fresh: bool = False, device: bool
    ) -> None:
        """``path`` comes from ``targets.restore_target``: a device, or a new empty file."""
        self.path = path
        self.sync = sync
        self._lock = threading.Lock()
        self.direct_fd = -1  # a device's second descriptor, around its page cache
        if fresh:
            # A new image exported by QEMU: reads as zeros, has its size; zero chunks are
            # left unwritten so its clusters stay unallocated.
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            self.write_zeros = False
        elif device:
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            if not stat.S_ISBLK(os.fstat(self.fd).st_mode):
                os.close(self.fd)
                raise UsageError(f"restore target {path} is no longer a block device")
            device_size = os.lseek(self.fd, 0, os.SEEK_END)
            if device_size < size:
                os.close(self.fd)
                raise UsageError(f"device {path} holds {device_size} bytes; the disk needs {size}")
            self.write_zeros = True
            self.sync = True  # a device restore is done when the device has the bytes
            if directio.enabled():
                # Aligned runs go to the device straight from one buffer: no copy into
                # the device's page cache, which the closing fsync would write again. The
                # device checked above is reopened, never the path again (a swapped link).
                with contextlib.suppress(OSError):
                    self.direct_fd = os.open(
                        f"/proc/self/fd/{self.fd}", os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT
                    )
        else:
            self.fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            os.ftruncate(self.fd, size)
            self.write_zeros = False

    def write(self, offset: int, pieces: Sequence[bytes | memoryview]) -> int:
        total = sum(len(p) for p in pieces)
        if self.direct_fd >= 0 and offset % directio.ALIGN == 0 and total % directio.ALIGN == 0:
            view = directio.gather_aligned(pieces, total)
            try:
                done = 0
                while done < total:
                    done += os.pwrite(self.direct_fd, view[done:], offset + done)
            finally:
                view.release()
            return total
        done = 0
        # One writer at a time: the kernel serialises writes to a file anyway (the inode
        # lock), and threads waiting for it there spin and burn CPU (measured: 16 % of a
        # restore); here they sleep while the other worker decrypts and verifies.
        with self._lock:
            while done < total:
                if done:  # a short write: finish the rest one piece at a time
                    rest = b"".join(pieces)[done:]
                    done += os.pwrite(self.fd, rest, offset + done)
                else:
                    done = os.pwritev(self.fd, pieces, offset)
        return total

    def zero(self, offset: int, length: int) -> int:
        """Make ``offset .. offset + length`` of a device read as zeros, asked of the device
        where it can: first as a hole (fallocate PUNCH_HOLE: zeroes guaranteed, and a thin
        device, an LVM thin volume or a loop device's sparse file, gives the space back
        instead of filling it), then BLKZEROOUT (zeroes, written by the device or the
        kernel), else written as zeros."""
        if offset % 512 == 0 and length % 512 == 0:
            if punch_hole(self.fd, offset, length):
                return length
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
                return length
            except OSError:
                pass
        return self.write(offset, [bytes(length)])

    def close(self) -> None:
        if self.direct_fd >= 0:
            os.close(self.direct_fd)  # its writes are on the device: the fsync below flushes
        # A file restore is left to the page cache like cp does (fsync costs ~3 s/GB here);
        # --sync asks for durability before reporting success.
        if self.sync:
            os.fsync(self.fd)
        os.close(self.fd)


def _object_store(vault: Vault) -> bool:
    """Whether each read of the vault is a request to a store (its ``parallel_writes`` hint
    says more than one write at once pays off: S3, Azure), not a read of a local file."""
    return int(getattr(vault.backend, "parallel_writes", 1)) > 1


class DiskRestore:
    def __init__(
        self,
        vault: Vault,
        name: str,
        manifest: DiskManifest,
        target: _Target | None,
        executor: ThreadPoolExecutor,
        workers: int,
        *,
        byte_buckets: Sequence[Bucket] = (),
        progress: ProgressCallback = no_progress,
    ) -> None:
        self.vault = vault
        self.name = name
        self.manifest = manifest
        self.target = target
        self.executor = executor
        # Blocks per task: about a pack's worth (16 MiB) of the disk, so one task's reads
        # coalesce; on an object store four packs' worth, where each read is a request: a
        # 4 MiB block stores about 1.8 MB, so one pack's worth of blocks is under half a
        # pack and its reads were 2-4 requests of ~2 MB (637 for the bench's 4 GiB image,
        # against 58 of ~6 MB per GiB with four; the task's memory grows by ~50 MiB).
        span = vault.config.pack_target * (4 if _object_store(vault) else 1)
        self.group = max(1, span // manifest.block_size)
        # Tasks in flight: what keeps every worker busy, and memory bounded (a task holds
        # its group's blobs, about two packs' worth, until it is written).
        self.max_inflight = 2 * workers if self.group == 1 else workers + 1
        # a pool's buckets are shared with the backups reading that pool
        self.byte_buckets = list(byte_buckets)
        self.progress = progress
        self.operation = "restore" if target else "verify"

    def run(self) -> RestoreReport:
        started = time.perf_counter()
        m = self.manifest
        report = RestoreReport(self.name, m.size)

        def collect(index: int, part: RestoreReport) -> None:
            report.chunks += part.chunks
            report.bytes_verified += part.bytes_verified
            report.bytes_written += part.bytes_written
            report.damaged += part.damaged
            done = min(m.size, (index + 1) * self.group * m.block_size)
            event = ProgressEvent(self.operation, self.name, done, m.size, report.bytes_verified)
            self.progress(event)

        groups = -(-m.block_count() // self.group)
        map_blocks(self.executor, groups, self._group, self.max_inflight, collect)
        report.seconds = time.perf_counter() - started
        return report

    def _group(self, g: int) -> RestoreReport:
        """Blocks ``g * group`` on, their records and chunks read together: blocks a backup
        wrote one after the other lie side by side in a pack, so the reads of a group
        coalesce into a few large ranges (one request per pack or so on an object store,
        instead of one per block)."""
        m = self.manifest
        blocks = range(g * self.group, min((g + 1) * self.group, m.block_count()))
        records = self.vault.records([m.records[b] for b in blocks])
        wanted = [
            cid
            for b in blocks
            if not isinstance(rec := records.get(m.records[b], []), Exception)
            for cid in rec
            if cid != ZERO_ID
        ]
        fetched = self.vault.fetch(wanted)
        total = RestoreReport(self.name, 0)
        for b in blocks:
            part = self._block(b, records, fetched)
            total.chunks += part.chunks
            total.bytes_verified += part.bytes_verified
            total.bytes_written += part.bytes_written
            total.damaged += part.damaged
        return total

    def _block(
        self,
        b: int,
        records: Mapping[bytes, list[bytes] | Exception],
        fetched: Mapping[bytes, memoryview | Exception],
    ) -> RestoreReport:
        m = self.manifest
        part = RestoreReport(self.name, 0)
        start = b * m.block_size
        length = min(m.block_size, m.size - start)
        record_id = m.records[b]
        if record_id == ZERO_ID:
            if self.target and self.target.write_zeros:
                part.bytes_written += self.target.zero(start, length)
            return part
        record = records[record_id]
        if isinstance(record, Exception):
            part.damaged.append(Damage(start, start + length, f"block record: {record}"))
            return part
        part.chunks = sum(1 for cid in record if cid != ZERO_ID)
        # consecutive pieces, written with one call
        run_start, run = start, list[bytes | memoryview]()
        for c, cid in enumerate(record):
            lo = start + c * m.chunk_size
            n = min(m.chunk_size, start + length - lo)
            data: memoryview | Exception | None = None if cid == ZERO_ID else fetched[cid]
            if isinstance(data, Exception):
                part.damaged.append(Damage(lo, lo + n, str(data)))
                data = None
            elif data is not None:
                part.bytes_verified += n
            if self.target is None:  # verify only
                continue
            if data is None and not (self.target and self.target.write_zeros):
                if run:
                    part.bytes_written += self._write(run_start, run)
                run, run_start = [], lo + n
                continue
            run.append(data if data is not None else bytes(n))
        if run:
            part.bytes_written += self._write(run_start, run)
        return part

    def _write(self, offset: int, pieces: Sequence[bytes | memoryview]) -> int:
        assert self.target is not None
        for bucket in self.byte_buckets:
            bucket.consume(sum(len(p) for p in pieces))
        return self.target.write(offset, pieces)


def point_disk(vault: Vault, point: RecoveryPoint, disk: str | None) -> DiskEntry:
    disks = point["disks"]
    if disk is None:
        if len(disks) != 1:
            names = ", ".join(d["name"] for d in disks)
            raise UsageError(f"point {point['id']} has several disks ({names}): name one")
        return DiskEntry(**disks[0])  # a copy: callers may add to it
    for d in disks:
        if d["name"] == disk:
            return DiskEntry(**d)
    raise PointNotFound(f"point {point['id']} has no disk named {disk!r}")


def restore_disk(
    vault: Vault,
    point_id: str,
    target: str | os.PathLike[str],
    *,
    disk: str | None = None,
    target_format: str = "raw",
    ignore_errors: bool = False,
    workers: int | None = None,
    byte_buckets: Sequence[Bucket] = (),
    sync: bool = False,
    force: bool = False,
    new_file: bool = False,
    progress: ProgressCallback = no_progress,
) -> RestoreReport:
    """Restore one disk of a point to ``target`` (see ``targets``: a file appears only
    whole, an existing one is replaced only with ``force``; a device is written in place
    unless ``new_file``)."""
    point = vault.get_point(point_id)
    entry = point_disk(vault, point, disk)
    manifest = vault.get_manifest(entry["manifest"])
    workers = workers or os.cpu_count() or 2
    try:
        with ExitStack() as stack:
            prepared = stack.enter_context(
                restore_target(Path(target), force=force, new_file=new_file)
            )
            path, fresh = Path(prepared.path), False
            if target_format != "raw":
                if prepared.is_device:
                    raise UsageError(f"{shown_path(target)} is a block device: restore it as raw")
                create_image(path, target_format, manifest.size, shown_as=shown_path(target))
                path = Path(stack.enter_context(fuse_export(path, target_format, writable=True)))
                fresh = True
            out = _Target(path, manifest.size, sync=sync, fresh=fresh, device=prepared.is_device)
            try:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
                    report = DiskRestore(
                        vault,
                        entry["name"],
                        manifest,
                        out,
                        pool,
                        workers,
                        byte_buckets=byte_buckets,
                        progress=progress,
                    ).run()
            finally:
                out.close()
            if report.damaged and not ignore_errors:
                ranges = [(d.start, d.end) for d in merge_damage(report.damaged)]
                damaged = sum(e - s for s, e in ranges)
                raise RestoreDamaged(
                    f"restore of {entry['name']} from {point_id} is incomplete: {damaged} "
                    f"bytes in {len(ranges)} range(s) are damaged or missing (first at byte "
                    f"{ranges[0][0]}); rerun with --ignore-errors to restore everything else",
                    ranges,
                )
    except OSError as exc:  # the target's file system: full, read-only, gone
        raise target_failure(target, exc) from None
    return report


def verify_point(
    vault: Vault,
    point_id: str,
    *,
    workers: int | None = None,
    progress: ProgressCallback = no_progress,
) -> list[RestoreReport]:
    """Read back every chunk of every disk of a point: authenticate, decompress, re-hash."""
    point = vault.get_point(point_id)
    workers = workers or os.cpu_count() or 2
    reports = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as executor:
        for entry in point["disks"]:
            manifest = vault.get_manifest(entry["manifest"])
            reports.append(
                DiskRestore(
                    vault, entry["name"], manifest, None, executor, workers, progress=progress
                ).run()
            )
    return reports
