"""One disk of a recovery point, read at any offset: what an NBD export serves.

Blocks (4 MiB) are read the way a restore reads them (engine/restore.py): the block's
record, then its chunks through ``Vault.fetch``, which authenticates, decompresses and
re-hashes every one. A block is assembled once and kept in a bounded LRU cache, so the
small reads of a client (64 KiB to a few MiB) cost one fetch per block, not one per read.
A client reading on from where it was gets the next blocks read ahead, a group at a time
(their ranges coalesce into a few reads, as a restore's do). All-zero blocks are never
fetched, and a block's zero chunks are known from its record alone: both are what
``extents`` reports as holes that read as zeros, so a client copies only the data.

Damage does not stop the export: a chunk that fails its check (or whose pack is gone)
makes the reads touching its bytes fail (``ExportReadError``, naming the chunk and its
pack), and every other byte stays readable.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from vmvault.errors import EXIT_DAMAGE, VmvaultError
from vmvault.vault.format import ZERO_ID, DiskManifest
from vmvault.vault.vault import Vault

MiB = 1024 * 1024
DEFAULT_CACHE_BYTES = 128 * MiB
# Blocks' layouts (runs of data and zeros) kept for ``extents``: a few hundred bytes each
# at most, 65536 of them describe 256 GiB of disk.
MAX_LAYOUTS = 65536
# Blocks one ``extents`` answer describes at most (1 GiB of disk: at most 256 records to
# read); a client asks again from where the answer ended.
EXTENT_BLOCKS = 256
# Blocks read recently: a read whose previous block is among them continues a stream.
RECENT_BLOCKS = 32
log = logging.getLogger("vmvault")


class ExportReadError(VmvaultError):
    """A read met bytes the vault cannot give back as they were stored."""

    code = "read_damaged"
    exit_code = EXIT_DAMAGE


@dataclass(frozen=True)
class Damage:
    """Bytes ``start`` to ``end`` of the disk cannot be read, and why."""

    start: int
    end: int
    reason: str


@dataclass(frozen=True)
class Block:
    data: memoryview  # the block's bytes, read-only (zeros where damaged)
    damaged: tuple[Damage, ...] = ()


# A block's runs: (start, end, 1 if zero else 0), offsets within the block.
Layout = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class Extent:
    start: int
    length: int
    zero: bool  # nothing stored: a hole that reads as zeros


def read_ahead_blocks(vault: Vault, block_size: int) -> int:
    """How many blocks to read ahead: the group a restore reads as one task (a pack's
    worth of the disk; four on an object store, where each read is a request)."""
    object_store = int(getattr(vault.backend, "parallel_writes", 1)) > 1
    span = vault.config.pack_target * (4 if object_store else 1)
    return max(1, span // block_size)


class PointReader:
    """Reads of one disk of a point; safe to call from any number of threads."""

    def __init__(
        self,
        vault: Vault,
        manifest: DiskManifest,
        *,
        name: str,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        read_ahead: int | None = None,
    ) -> None:
        self.vault = vault
        self.manifest = manifest
        self.name = name
        self.size = manifest.size
        bs = manifest.block_size
        self.read_ahead = read_ahead_blocks(vault, bs) if read_ahead is None else read_ahead
        # A group read ahead must still be cached when the client gets to it, beside the
        # blocks the client's own reads hold.
        self.capacity = max(cache_bytes // bs, 2 * self.read_ahead + 2)
        self.stats = {"blocks_fetched": 0, "blocks_read_ahead": 0, "cache_hits": 0}
        self._zeros = bytes(bs)
        self._lock = threading.Lock()
        self._blocks: OrderedDict[int, Block] = OrderedDict()
        self._loading: dict[int, Future[Block]] = {}  # blocks being fetched, by any thread
        self._known_layouts: OrderedDict[int, Layout] = OrderedDict()
        self._recent: deque[int] = deque(maxlen=RECENT_BLOCKS)
        self._ahead = ThreadPoolExecutor(max_workers=2, thread_name_prefix="export-read-ahead")
        self._closed = False

    # -- reads --------------------------------------------------------------------------

    def read_into(self, buf: memoryview, offset: int) -> None:
        """Fill ``buf`` with the disk's bytes from ``offset``; ``ExportReadError`` if any
        of them is damaged or missing in the vault."""
        length = len(buf)
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"read of {length} bytes at {offset} is outside the disk")
        if not length:
            return
        bs = self.manifest.block_size
        first, last = offset // bs, (offset + length - 1) // bs
        self._read_ahead(first, last)
        blocks = self._get(range(first, last + 1))
        for b in range(first, last + 1):
            lo, hi = max(offset, b * bs), min(offset + length, (b + 1) * bs)
            block = blocks[b]
            target = buf[lo - offset : hi - offset]
            if block is None:
                target[:] = self._zeros[: hi - lo]
                continue
            for d in block.damaged:
                if d.start < hi and d.end > lo:
                    raise ExportReadError(
                        f"bytes {max(d.start, lo)}-{min(d.end, hi)} of disk {self.name} "
                        f"cannot be read: {d.reason}"
                    )
            target[:] = block.data[lo - b * bs : hi - b * bs]

    def _get(self, blocks: Iterable[int]) -> dict[int, Block | None]:
        """The blocks (None: all zero), from the cache, a fetch under way, or the vault."""
        records = self.manifest.records
        found: dict[int, Block | None] = {}
        waits: dict[int, Future[Block]] = {}
        mine: list[int] = []
        with self._lock:
            for b in blocks:
                if records[b] == ZERO_ID:
                    found[b] = None
                elif (block := self._blocks.get(b)) is not None:
                    self._blocks.move_to_end(b)
                    self.stats["cache_hits"] += 1
                    found[b] = block
                elif (pending := self._loading.get(b)) is not None:
                    waits[b] = pending
                else:
                    self._loading[b] = Future()
                    mine.append(b)
        if mine:
            found.update(self._fill(mine))
        for b, pending in waits.items():
            found[b] = pending.result()
        return found

    def _fill(self, blocks: Sequence[int]) -> dict[int, Block]:
        """Fetch blocks this thread registered in ``_loading``, cache them, and hand them
        to the threads waiting for them (or the failure, which nobody caches)."""
        try:
            loaded = self._load(blocks)
        except BaseException as exc:
            with self._lock:
                for b in blocks:
                    if (pending := self._loading.pop(b, None)) is not None:
                        pending.set_exception(exc)
            raise
        with self._lock:
            for b, block in loaded.items():
                self._blocks[b] = block
                self._blocks.move_to_end(b)
                # absent only once ``close`` has told the waiting readers the export ends
                if (pending := self._loading.pop(b, None)) is not None:
                    pending.set_result(block)
            while len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)
            self.stats["blocks_fetched"] += len(loaded)
        return loaded

    def _load(self, blocks: Sequence[int]) -> dict[int, Block]:
        """Blocks read together, as a restore reads a group: their records, then all their
        chunks in one ``fetch`` (nearby ranges of a pack become one read)."""
        m = self.manifest
        records = self.vault.records([m.records[b] for b in blocks])
        wanted = [
            cid
            for b in blocks
            if not isinstance(record := records[m.records[b]], Exception)
            for cid in record
            if cid != ZERO_ID
        ]
        fetched = self.vault.fetch(wanted)
        out = {}
        for b in blocks:
            record = records[m.records[b]]
            if not isinstance(record, Exception):
                self._remember_layout(b, record)
            out[b] = self._assemble(b, record, fetched)
        return out

    def _assemble(
        self,
        b: int,
        record: list[bytes] | Exception,
        fetched: dict[bytes, memoryview | Exception],
    ) -> Block:
        m = self.manifest
        start = b * m.block_size
        length = min(m.block_size, m.size - start)
        if not isinstance(record, Exception) and len(record) != -(-length // m.chunk_size):
            record = ValueError(f"it lists {len(record)} chunks for {length} bytes")
        if isinstance(record, Exception):
            reason = f"block record {m.records[b].hex()[:16]}: {record}"
            whole = Damage(start, start + length, reason)
            return Block(memoryview(self._zeros)[:length], (whole,))
        data = bytearray(length)
        damaged = []
        for c, cid in enumerate(record):
            lo = c * m.chunk_size
            n = min(m.chunk_size, length - lo)
            if cid == ZERO_ID:
                continue
            piece = fetched[cid]
            if isinstance(piece, Exception):
                damaged.append(Damage(start + lo, start + lo + n, str(piece)))
            elif len(piece) != n:  # a slice of another length would resize the block
                reason = f"chunk {cid.hex()[:16]} holds {len(piece)} bytes, its place {n}"
                damaged.append(Damage(start + lo, start + lo + n, reason))
            else:
                data[lo : lo + n] = piece
        return Block(memoryview(data).toreadonly(), tuple(damaged))

    # -- read-ahead -----------------------------------------------------------------------

    def _read_ahead(self, first: int, last: int) -> None:
        """A read that continues a stream (the block before it was read lately) gets the
        blocks after it fetched in the background, in groups of at least half the window
        (so the fetches stay large), or at once when the very next block is missing."""
        if self.read_ahead <= 0:
            return
        records = self.manifest.records
        count = len(records)
        with self._lock:
            streaming = (first - 1) in self._recent
            read = [b for b in range(first, last + 1) if b not in self._recent]
            self._recent.extend(read)
            if not streaming or self._closed:
                return
            window = [
                b
                for b in range(last + 1, min(last + 1 + self.read_ahead, count))
                if records[b] != ZERO_ID
            ]
            missing = [b for b in window if b not in self._blocks and b not in self._loading]
            if not missing or (
                len(missing) < max(1, self.read_ahead // 2) and missing[0] != window[0]
            ):
                return
            for b in missing:
                self._loading[b] = Future()
            self.stats["blocks_read_ahead"] += len(missing)
        self._ahead.submit(self._prefetch, missing)

    def _prefetch(self, blocks: Sequence[int]) -> None:
        try:
            self._fill(blocks)
        except Exception as exc:  # a reader waiting for these blocks gets it; nobody else
            log.debug("read-ahead of blocks %s failed: %s", list(blocks), exc)

    # -- block status -------------------------------------------------------------------

    def extents(self, offset: int, length: int, *, one: bool = False) -> list[Extent]:
        """From ``offset``, runs of data and of zeros (never stored: holes reading as
        zeros), at chunk granularity, over at most ``EXTENT_BLOCKS`` blocks of ``length``;
        ``one``: only the first run (what a client asking with NBD's REQ_ONE flag uses,
        as QEMU's does).

        A block whose record cannot be read is reported as data: reading it then fails
        and says why, where a zero would hide the damage."""
        m = self.manifest
        if length <= 0 or offset >= self.size:
            return []
        first = offset // m.block_size
        last = min(
            (offset + length - 1) // m.block_size, first + EXTENT_BLOCKS - 1, len(m.records) - 1
        )
        layouts = self._layouts(range(first, last + 1))
        runs: list[list[int]] = []  # [start, end, zero]
        for b in range(first, last + 1):
            base = b * m.block_size
            for lo, hi, zero in layouts[b]:
                start, end = max(base + lo, offset), base + hi
                if end <= start:
                    continue
                if runs and runs[-1][2] == zero and runs[-1][1] == start:
                    runs[-1][1] = end
                elif one and runs:
                    return [Extent(runs[0][0], runs[0][1] - runs[0][0], bool(runs[0][2]))]
                else:
                    runs.append([start, end, zero])
        return [Extent(s, e - s, bool(z)) for s, e, z in runs]

    def _layouts(self, blocks: range) -> dict[int, Layout]:
        """Each block's runs of data and zeros (offsets within the block), from its record:
        read once (the records of the blocks not known yet, in one batch), then kept."""
        m = self.manifest
        out: dict[int, Layout] = {}
        missing = []
        with self._lock:
            for b in blocks:
                if m.records[b] == ZERO_ID:
                    out[b] = ((0, self._block_length(b), 1),)
                elif (known := self._known_layouts.get(b)) is not None:
                    self._known_layouts.move_to_end(b)
                    out[b] = known
                else:
                    missing.append(b)
        if missing:
            records = self.vault.records([m.records[b] for b in missing])
            for b in missing:
                record = records[m.records[b]]
                if isinstance(record, Exception):
                    out[b] = ((0, self._block_length(b), 0),)  # data: see ``extents``
                else:
                    out[b] = self._remember_layout(b, record)
        return out

    def _block_length(self, b: int) -> int:
        return min(self.manifest.block_size, self.size - b * self.manifest.block_size)

    def _remember_layout(self, b: int, record: list[bytes]) -> Layout:
        cs, length = self.manifest.chunk_size, self._block_length(b)
        if len(record) != -(-length // cs):  # damaged: reads of it fail (``_assemble``)
            record = [b"\xff"] * -(-length // cs)
        runs: list[tuple[int, int, int]] = []
        for c, cid in enumerate(record):
            lo, hi, zero = c * cs, min((c + 1) * cs, length), int(cid == ZERO_ID)
            if runs and runs[-1][2] == zero:
                runs[-1] = (runs[-1][0], hi, zero)
            else:
                runs.append((lo, hi, zero))
        layout = tuple(runs)
        with self._lock:
            self._known_layouts[b] = layout
            self._known_layouts.move_to_end(b)
            while len(self._known_layouts) > MAX_LAYOUTS:
                self._known_layouts.popitem(last=False)
        return layout

    def cached_blocks(self) -> int:
        with self._lock:
            return len(self._blocks)

    # -- end ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading ahead; a reader still waiting for a group is told the export ends."""
        with self._lock:
            self._closed = True
        self._ahead.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for b, pending in list(self._loading.items()):
                if not pending.done():
                    pending.set_exception(ExportReadError("the export is ending"))
                    del self._loading[b]
