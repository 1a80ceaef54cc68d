"""Deterministic generator of realistic raw VM disk images, for tests and benchmarks.

Backup benchmarks are only comparable when every run reads the same bytes, so the
output here is a pure function of the arguments and never depends on the number of
worker processes: every piece of content is derived from its own string seed.

A fresh image (``create_disk``) is a sparse file made of shuffled extents of
log-uniform length 64 KiB..16 MiB, aligned to ``align``:
40 % holes (never written), 10 % written zeros, 25 % log-like text,
20 % pseudo-random bytes and 5 % byte copies of other text/random extents.
``allocated`` changes the written share (60 % by default): the written kinds keep their
relative shares (1 : 2.5 : 2 : 0.5) and the rest is holes.
``mutate_disk`` simulates a day of guest writes: scattered 64 KiB writes at
distinct 64 KiB slots (50 % text, 40 % random, 10 % zeros).
The mix and the text's compressibility (about 3.9x with zstd -3, 2.9x with
zstd -1) reproduce those of ``make_disk.py``, which made the baseline benchmark
numbers, so results stay comparable (this is an independent implementation).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import multiprocessing
import os
import random
import re
import signal
import sys
import time
from array import array
from dataclasses import dataclass
from fractions import Fraction
from typing import NoReturn

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MUTATION_BLOCK = 64 * KiB

_MIX = (("hole", 40), ("zero", 10), ("text", 25), ("random", 20))  # percent; "dup" gets the rest
_DEFAULT_ALLOCATED = Fraction(100 - _MIX[0][1], 100)  # the written share of the default mix
_EXTENT_MIN, _EXTENT_MAX = 64 * KiB, 16 * MiB
_PIECE = 1 * MiB  # unit of generation and of os.pwrite
_TASK_BYTES = 8 * MiB  # pieces go to workers in tasks of this size, for load balancing
_TEXT_BATCH = 4096  # tokens drawn per randbytes() call; fixed so text is prefix-stable
_ZEROS = bytes(_PIECE)

# (offset, length, content kind, content key): one pwrite; the key seeds the content.
_Piece = tuple[int, int, str, str]


@dataclass(frozen=True)
class DiskStats:
    """Summary of ``create_disk``; ``by_kind`` bytes sum to ``size`` (the tail counts as hole)."""

    path: str
    size: int
    extents: int
    written: int
    by_kind: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class MutationStats:
    """Summary of ``mutate_disk``; ``by_kind`` counts writes of each content kind."""

    path: str
    writes: int
    bytes_written: int
    by_kind: dict[str, int]
    seconds: float
    seed: int = 2


def _build_table() -> list[bytes]:
    """Return 65536 log tokens; a uniform 16-bit index picks them with Zipf-like frequencies.

    Indexing a prebuilt table with random bytes is the fastest pure-Python way to get
    text that compresses like real syslog/app logs (headers, words, ids, IPs, timings).
    """
    r = random.Random("vmvault.testdisk vocabulary v1")
    hosts = [b"%s-%02d" % (h, i) for h in (b"app", b"db", b"cache", b"edge") for i in range(1, 5)]
    progs = b"sshd systemd kernel nginx postgres CRON dockerd kubelet java haproxy sudo".split()
    progs += b"rsyslogd chronyd redis-server gunicorn containerd".split()
    levels = b"INFO INFO INFO INFO DEBUG DEBUG WARN ERROR NOTICE".split()
    months = b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    headers = []
    for _ in range(3000):
        when = (r.choice(months), r.randint(1, 28), r.randint(0, 23), r.randint(0, 59))
        who = (r.randint(0, 59), r.choice(hosts), r.choice(progs), r.randint(2, 65535))
        headers.append(b"\n%s %2d %02d:%02d:%02d %s %s[%d]: %s " % (*when, *who, r.choice(levels)))
    words = (
        b"request the connection user from session for to GET in completed is of handler opened "
        b"closed status=200 POST a with on ms took bytes accepted failed client worker started "
        b"stopped reload service unit state active running exited code=0 timeout retry "
        b"checkpoint wrote buffers WAL segment vacuum table index scan duration: statement: "
        b"SELECT FROM WHERE id = LIMIT UPDATE SET INSERT INTO /api/v2/orders /api/v2/customers "
        b"/metrics /healthz /login /static/main.css status=404 status=500 status=302 HTTP/1.1 "
        b"HTTP/2 upstream response latency pam_unix(sshd:session): Accepted publickey password "
        b"port ssh2 Disconnected Out of memory: Killed process eth0: link is up 1000Mbps cache "
        b"hit miss evicted container image pulled pod volume mounted sandbox Starting Started "
        b"Finished Reached target Listening socket queue depth backoff job done rotated "
        b"compressed error warning trace debug info key=value not found denied permission "
        b"audit: type=USER_LOGIN res=success Mozilla/5.0 curl/8.1.2 python-requests/2.31"
    ).split()
    fields = [b"%08x" % r.getrandbits(32) for _ in range(2200)]
    fields += [b"%d" % r.randint(0, 99999) for _ in range(1500)]
    fields += [
        b"10.%d.%d.%d" % (r.randint(0, 255), r.randint(0, 255), r.randint(1, 254))
        for _ in range(800)
    ]
    fields += [b"uid=%d" % r.randint(1000, 6000) for _ in range(400)]
    fields += [b"%d.%03dms" % (r.randint(0, 900), r.randint(0, 999)) for _ in range(600)]
    r.shuffle(fields)
    ranked = [w + b" " for w in words + fields]
    cumulative = list(itertools.accumulate(1.0 / (k + 1) for k in range(len(ranked))))  # Zipf
    n_headers = 65536 * 8 // 100  # one line header per ~12 tokens: 80-120 byte lines
    n_body = 65536 - n_headers
    # Quantile mapping: slot j of the body gets the token whose cumulative weight covers it.
    step = cumulative[-1] / n_body
    body = [
        ranked[min(len(ranked) - 1, bisect.bisect_right(cumulative, (j + 0.5) * step))]
        for j in range(n_body)
    ]
    return [headers[i % len(headers)] for i in range(n_headers)] + body


_TABLE: list[bytes] = []


def _text(rng: random.Random, size: int) -> memoryview:
    """Log-like text; batches of fixed size make a shorter request a prefix of a longer one."""
    if not _TABLE:
        _TABLE.extend(_build_table())
    get = _TABLE.__getitem__
    parts, have = [], 0
    while have < size:
        idx = array("H", rng.randbytes(2 * _TEXT_BATCH))
        if sys.byteorder == "big":
            idx.byteswap()  # same bytes on every platform
        parts.append(b"".join(map(get, idx)))
        have += len(parts[-1])
    return memoryview(b"".join(parts))[:size]  # a view: no copy


def _content(kind: str, key: str, size: int) -> memoryview:
    """Bytes of one piece; a pure function of (kind, key), truncated to ``size``."""
    if kind == "zero":
        return memoryview(_ZEROS)[:size]
    rng = random.Random(key)
    if kind == "text":
        return _text(rng, size)
    blocks = -(-size // MUTATION_BLOCK)  # whole 64 KiB blocks keep random prefix-stable too
    return memoryview(b"".join(rng.randbytes(MUTATION_BLOCK) for _ in range(blocks)))[:size]


_FD = -1


def _open_worker(path: str) -> None:
    """Pool initializer: one descriptor per worker process instead of one per task.

    The workers are forked from a CLI whose SIGTERM handler unwinds the command; the pool
    ends its workers with SIGTERM, which must simply end them (no traceback each)."""
    global _FD
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _FD = os.open(path, os.O_WRONLY)


def _write_task(pieces: list[_Piece]) -> int:
    """Generate and write some pieces into the image opened by ``_open_worker``."""
    for offset, length, kind, key in pieces:
        if os.pwrite(_FD, _content(kind, key, length), offset) != length:  # e.g. disk full
            raise OSError(f"short write of {length} bytes at offset {offset}")
    return sum(p[1] for p in pieces)


def _run(path: str, pieces: list[_Piece], jobs: int | None) -> int:
    """Write all pieces with ``jobs`` forked workers; content never depends on who writes it."""
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if any(p[2] == "text" for p in pieces):
        _text(random.Random(0), 1)  # build the token table once, before forking
    tasks: list[list[_Piece]] = []  # ~8 MiB each, in offset order, handed out dynamically
    filled = _TASK_BYTES
    for piece in sorted(pieces):
        if filled >= _TASK_BYTES:
            tasks.append([])
            filled = 0
        tasks[-1].append(piece)
        filled += piece[1]
    if jobs == 1 or len(tasks) <= 1:
        _open_worker(path)
        try:
            return sum(map(_write_task, tasks))
        finally:
            os.close(_FD)
    with multiprocessing.get_context("fork").Pool(
        min(jobs, len(tasks)), initializer=_open_worker, initargs=(path,)
    ) as pool:
        return sum(pool.imap_unordered(_write_task, tasks))  # all written before the pool ends


def _shares(allocated: Fraction) -> list[tuple[str, Fraction]]:
    """The share of the disk each kind but "dup" gets, for a written share of ``allocated``.

    The written kinds are scaled together, so they keep the proportions of ``_MIX``; at the
    default 3/5 every share is exactly the percentage of ``_MIX`` (and so is its rounding).
    """
    written = 100 - _MIX[0][1]
    return [("hole", 1 - allocated)] + [
        (kind, allocated * percent / written) for kind, percent in _MIX[1:]
    ]


def _plan(
    size: int, seed: int, align: int, allocated: Fraction = _DEFAULT_ALLOCATED
) -> list[tuple[int, int, str, str, str]]:
    """Layout as (offset, length, kind, content kind, content key), covering size // align units.

    Text/random extents get unique keys (no accidental dedup); a "dup" extent reuses
    the key of its source, so its bytes are a prefix of the source's bytes.
    """
    rng = random.Random(f"vmvault.testdisk layout v1|{size}|{seed}|{align}")
    units = size // align
    lo, hi = math.log(_EXTENT_MIN), math.log(_EXTENT_MAX)
    extents: list[tuple[int, str, str, str]] = []  # (units, kind, content kind, key)
    used = 0
    for kind, share in _shares(allocated):
        left = math.floor(units * share)
        used += left
        while left > 0:
            n = min(left, max(1, int(math.exp(rng.uniform(lo, hi))) // align))
            key = f"{seed}|{size}|{align}|{kind}|{len(extents)}"
            extents.append((n, kind, kind, key))
            left -= n
    sources = [e for e in extents if e[1] in ("text", "random")]
    left = units - used
    while left > 0 and sources:
        n, _, content, key = rng.choice(sources)
        extents.append((min(n, left), "dup", content, key))
        left -= min(n, left)
    if left > 0:  # too small to hold any text/random extent to copy
        extents.append((left, "hole", "hole", ""))
    rng.shuffle(extents)
    layout, offset = [], 0
    for n, kind, content, key in extents:
        layout.append((offset, n * align, kind, content, key))
        offset += n * align
    return layout


def create_disk(
    path: str | os.PathLike[str],
    size: int,
    seed: int = 1,
    align: int = 4 * KiB,
    jobs: int | None = None,
    allocated: float | None = None,
) -> DiskStats:
    """Create (overwrite) a sparse raw image of exactly ``size`` bytes; see the module doc.

    ``allocated`` is the share of the disk that is written (0 < allocated <= 1; None: the
    default mix's 60 %), the rest being holes.
    """
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    if allocated is not None and not 0 < allocated <= 1:  # NaN fails this too
        raise ValueError(f"allocated must be > 0 and <= 1, got {allocated}")
    if align <= 0 or align % 512:
        raise ValueError(f"align must be a positive multiple of 512, got {align}")
    if jobs is not None and jobs < 1:  # checked before the image is touched
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    start, path = time.perf_counter(), os.fspath(path)
    # str() first: Fraction(0.6) would be the binary float, not 3/5, and a 0.6 asked for
    # explicitly should give the default layout's exact rounding.
    share = _DEFAULT_ALLOCATED if allocated is None else Fraction(str(allocated))
    layout = _plan(size, seed, align, share)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)  # everything not written below stays a hole
    finally:
        os.close(fd)
    by_kind = dict.fromkeys(("hole", "zero", "text", "random", "dup"), 0)
    pieces: list[_Piece] = []
    for offset, length, kind, content, key in layout:
        by_kind[kind] += length
        if content != "hole":
            pieces += [
                (offset + i, min(_PIECE, length - i), content, f"{key}|{i // _PIECE}")
                for i in range(0, length, _PIECE)
            ]
    by_kind["hole"] += size - sum(by_kind.values())
    written = _run(path, pieces, jobs)
    return DiskStats(path, size, len(layout), written, by_kind, time.perf_counter() - start)


def mutate_disk(
    path: str | os.PathLike[str], percent: float, seed: int = 2, jobs: int | None = None
) -> MutationStats:
    """Rewrite ``percent`` % of the image's 64 KiB slots in place, like a day of guest writes."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be between 0 and 100, got {percent}")
    if jobs is not None and jobs < 1:  # checked before the image is touched
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    start, path = time.perf_counter(), os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cannot mutate {path!r}: no such image file")
    size = os.path.getsize(path)
    slots = size // MUTATION_BLOCK
    rng = random.Random(f"vmvault.testdisk mutate v1|{size}|{seed}|{float(percent)!r}")
    chosen = sorted(rng.sample(range(slots), min(slots, round(slots * percent / 100))))
    by_kind = dict.fromkeys(("text", "random", "zero"), 0)
    pieces: list[_Piece] = []
    for slot in chosen:
        x = rng.random()
        kind = "text" if x < 0.5 else "random" if x < 0.9 else "zero"
        by_kind[kind] += 1
        pieces.append((slot * MUTATION_BLOCK, MUTATION_BLOCK, kind, f"mut|{seed}|{size}|{slot}"))
    written = _run(path, pieces, jobs)
    return MutationStats(path, len(pieces), written, by_kind, time.perf_counter() - start, seed)


def parse_size(text: str) -> int:
    """Parse "4G", "512M", "64KiB", "1.5T" or "123" (binary units) into bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:I?B)?|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"invalid size {text!r}: expected a number with optional K/M/G/T suffix")
    return int(Fraction(m[1]) * 1024 ** " KMGT".index((m[2] or " ").upper()))


class _UsageError(Exception):
    """Raised instead of argparse's exit, so ``main`` can print one line and return 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def main(argv: list[str] | None = None) -> int:
    """Command line: create an image, or mutate one with ``--mutate PCT``."""
    parser = _Parser(
        prog="python -m vmvault.testdisk",
        description="Create or mutate a deterministic synthetic raw VM disk image.",
    )
    parser.add_argument("image", help="image file (overwritten on create)")
    parser.add_argument("--size", default="4G", help="image size, e.g. 4G (default 4G)")
    parser.add_argument("--seed", type=int, help="seed (default 1 for create, 2 for --mutate)")
    parser.add_argument("--align", default="4K", help="extent alignment (default 4K)")
    parser.add_argument("--mutate", type=float, metavar="PCT", help="rewrite PCT %% of IMAGE")
    parser.add_argument(
        "--allocated", type=float, metavar="PCT", help="written share of a new image (default 60)"
    )
    parser.add_argument("-j", "--jobs", type=int, help="worker processes (default: CPU count)")
    try:
        a = parser.parse_args(argv)
        seed = a.seed if a.seed is not None else 1 if a.mutate is None else 2
        if a.mutate is not None:
            m = mutate_disk(a.image, a.mutate, seed, a.jobs)
            kinds = ", ".join(f"{k}={v}" for k, v in m.by_kind.items())
            print(
                f"mutated {m.path}: {m.writes} x 64 KiB writes = {m.bytes_written} bytes "
                f"({a.mutate:g} %), {kinds}, {m.seconds:.1f} s"
            )
        else:
            share = None if a.allocated is None else a.allocated / 100
            d = create_disk(
                a.image, parse_size(a.size), seed, parse_size(a.align), a.jobs, allocated=share
            )
            mix = ", ".join(f"{k} {100 * v / d.size:.1f} %" for k, v in d.by_kind.items())
            print(
                f"created {d.path}: {d.size} bytes, {d.extents} extents, wrote {d.written} "
                f"bytes in {d.seconds:.1f} s ({mix})"
            )
    except (_UsageError, ValueError, OSError) as exc:
        print(f"testdisk: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
