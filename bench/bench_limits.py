"""What this machine can do at best, and the time vmvault's work would take at those speeds.

Each speed is measured on this machine, single-threaded, on the benchmark image's own data
where the data matters (compression). A step's "limit" is the CPU time of the work it
cannot skip, at these speeds, spread perfectly over every core:

    backup:  limit = ( read / cat_read                 page-cache read of the bytes it read
                     + (read - zero) / blake3_1t       hash every non-zero chunk
                     + new * compressible / zstd3_c    compress new compressible bytes
                     + stored / aes_gcm                encrypt what goes into the vault
                     ) / cores
    restore: limit = ( verified / aes_gcm * stored_ratio   decrypt (stored size estimated
                                                           from backup1's stored/new)
                     + verified * compressible / zstd3_d   decompress
                     + verified / blake3_1t                re-hash to verify
                     + verified / write                    page-cache write of the data
                     ) / cores

read, zero, new, stored come from ``vmvault backup --json`` (disk stats) and verified from
``vmvault restore --json`` (bytes_verified). It is a lower bound: no tool can do less
arithmetic on this data with these libraries, and none parallelises better than perfectly.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import bench_proc
import blake3
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CHUNK = 64 * KiB  # vmvault's chunk: the unit of zero detection, hashing and probing
BLOCK = 4 * MiB  # vmvault's block: runs of compressible chunks are compressed per block
PROBE = 4 * KiB  # vmvault compresses a chunk only if a zstd -1 probe of 4 KiB shrinks it
PROBE_KEEP = 0.95
AEAD_MESSAGE = 64 * KiB

FORMULA = __doc__.split("\n\n", 1)[1] if __doc__ else ""  # printed in the report


@dataclass
class Speeds:
    """Bytes per second of each primitive (input bytes, except decompression: output)."""

    cat_read: float  # `cat IMG > /dev/null`, logical size / wall
    write: float  # page-cache write of a new file (no fsync)
    blake3_1t: float
    blake3_mt: float  # max_threads=AUTO, for reference
    zstd3_nonzero: float  # level 3 on all non-zero chunks of the sample
    zstd3_compressible: float  # level 3 on the chunks vmvault's probe would compress
    zstd3_decompress: float  # output bytes per second
    compressible_fraction: float  # of the sample's non-zero bytes
    zstd3_ratio: float  # input / output on compressible chunks
    aes_gcm: float  # AES-256-GCM encrypt, 64 KiB messages

    @classmethod
    def median(cls, runs: list[Speeds]) -> Speeds:
        return cls(
            **{f.name: statistics.median(getattr(r, f.name) for r in runs) for f in fields(cls)}
        )


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _pattern(size: int) -> memoryview:
    """Pseudo-random bytes: a 64 MiB pattern repeated, as in the baseline's hashbench.py."""
    unit = min(size, 64 * MiB)
    block = random.Random(0).randbytes(unit)
    return memoryview(block * (size // unit) + block[: size % unit])


def blake3_speeds(buf: memoryview) -> tuple[float, float]:
    """One-shot BLAKE3 over ``buf``: one thread, then all threads."""
    one = _timed(lambda: blake3.blake3(buf).digest())
    every = _timed(lambda: blake3.blake3(buf, max_threads=blake3.blake3.AUTO).digest())
    return len(buf) / one, len(buf) / every


def aes_gcm_speed(buf: memoryview) -> float:
    """AES-256-GCM encryption of ``buf`` in 64 KiB messages (vmvault seals pieces this size)."""
    aead = AESGCM(bytes(32))

    def encrypt_all() -> None:
        for n, pos in enumerate(range(0, len(buf), AEAD_MESSAGE)):
            aead.encrypt(n.to_bytes(12, "big"), buf[pos : pos + AEAD_MESSAGE], None)

    return len(buf) / _timed(encrypt_all)


def write_speed(buf: memoryview, directory: Path) -> float:
    """Writing ``buf`` into a new file through the page cache, as a restore does (no fsync)."""
    path = directory / "write-speed.tmp"

    def write_all() -> None:
        with open(path, "wb", buffering=0) as f:
            for pos in range(0, len(buf), 16 * MiB):
                f.write(buf[pos : pos + 16 * MiB])

    try:
        return len(buf) / _timed(write_all)
    finally:
        path.unlink(missing_ok=True)


def sample_data(image: Path, limit: int) -> bytes:
    """Up to ``limit`` bytes of the image's data ranges, the same share taken from each range."""
    ranges = list(bench_proc.data_ranges(image))
    total = sum(end - start for start, end in ranges)
    share = min(1.0, limit / total) if total else 0.0
    parts = []
    with open(image, "rb") as f:
        for start, end in ranges:
            take = int((end - start) * share) // CHUNK * CHUNK
            if take:
                f.seek(start)
                parts.append(f.read(take))
    return b"".join(parts)


def _runs(sample: bytes) -> tuple[list[bytes], list[bytes]]:
    """Per 4 MiB block: runs of probe-compressible chunks, and runs of all non-zero chunks."""
    probe = zstandard.ZstdCompressor(level=1)
    zero = bytes(CHUNK)
    compressible: list[bytes] = []
    nonzero: list[bytes] = []
    view = memoryview(sample)
    for block in range(0, len(sample), BLOCK):
        run_c: list[memoryview] = []
        run_n: list[memoryview] = []
        for pos in range(block, min(block + BLOCK, len(sample)), CHUNK):
            chunk = view[pos : pos + CHUNK]
            if chunk == zero:
                continue
            run_n.append(chunk)
            middle = (len(chunk) - PROBE) // 2
            if len(probe.compress(chunk[middle : middle + PROBE])) <= PROBE * PROBE_KEEP:
                run_c.append(chunk)
        if run_c:
            compressible.append(b"".join(run_c))
        if run_n:
            nonzero.append(b"".join(run_n))
    return compressible, nonzero


def zstd_speeds(sample: bytes) -> dict[str, float]:
    """zstd level 3 compress/decompress speed, compressible share and ratio on the sample."""
    compressible, nonzero = _runs(sample)
    cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    c_bytes, n_bytes = sum(map(len, compressible)), sum(map(len, nonzero))
    t_nonzero = _timed(lambda: [cctx.compress(r) for r in nonzero])
    start = time.perf_counter()
    packed = [cctx.compress(r) for r in compressible]
    t_comp = time.perf_counter() - start
    t_dec = _timed(lambda: [dctx.decompress(p) for p in packed])
    packed_bytes = sum(map(len, packed))
    return {
        "zstd3_nonzero": n_bytes / t_nonzero if t_nonzero else 0.0,
        "zstd3_compressible": c_bytes / t_comp if t_comp else 0.0,
        "zstd3_decompress": c_bytes / t_dec if t_dec else 0.0,
        "compressible_fraction": c_bytes / n_bytes if n_bytes else 0.0,
        "zstd3_ratio": c_bytes / packed_bytes if packed_bytes else 1.0,
    }


def cli_references(image: Path, logs: Path, rep: int) -> dict[str, bench_proc.Measured]:
    """`cat IMG > /dev/null`, and `zstd -q -1 -T2/-T1 -c IMG > /dev/null` if zstd exists."""
    commands = {"cat (page cache)": ["cat", str(image)]}
    if shutil.which("zstd"):
        for threads in (2, 1):
            commands[f"zstd -1 -T{threads}"] = [
                "zstd",
                "-q",
                "-1",
                f"-T{threads}",
                "-c",
                str(image),
            ]
    results: dict[str, bench_proc.Measured] = {}
    for name, argv in commands.items():
        stem = logs / f"machine-{rep}-{name.split()[0]}-{len(results)}"
        results[name] = bench_proc.run_timed(argv, stem, discard_stdout=True)
        bench_proc.progress(f"machine rep {rep}", f"{name} {results[name].wall:.2f} s")
    return results


def measure_speeds(image: Path, cat_wall: float, memory_bytes: int, sample_bytes: int) -> Speeds:
    """All in-process speeds for one repetition; ``cat_wall`` gives the page-cache read speed."""
    buf = _pattern(memory_bytes)
    b3_one, b3_all = blake3_speeds(buf)
    speeds = Speeds(
        cat_read=image.stat().st_size / cat_wall if cat_wall else 0.0,
        write=write_speed(buf, image.parent),
        blake3_1t=b3_one,
        blake3_mt=b3_all,
        aes_gcm=aes_gcm_speed(buf),
        **zstd_speeds(sample_data(image, sample_bytes)),
    )
    del buf
    return speeds


def _seconds(nbytes: float, speed: float) -> float:
    return nbytes / speed if speed else 0.0


def backup_limit(stats: dict[str, Any], speeds: Speeds, cores: int) -> dict[str, float]:
    """The backup formula above applied to one disk's ``--json`` stats."""
    parts = {
        "read": _seconds(stats["read"], speeds.cat_read),
        "hash": _seconds(stats["read"] - stats["zero"], speeds.blake3_1t),
        "compress": _seconds(
            stats["new"] * speeds.compressible_fraction, speeds.zstd3_compressible
        ),
        "encrypt": _seconds(stats["stored"], speeds.aes_gcm),
    }
    return {**parts, "cpu_s": sum(parts.values()), "wall_s": sum(parts.values()) / cores}


def restore_limit(
    verified: int, stored_ratio: float, speeds: Speeds, cores: int
) -> dict[str, float]:
    """The restore formula above; ``stored_ratio`` is stored/new of the full backup."""
    parts = {
        "decrypt": _seconds(verified * stored_ratio, speeds.aes_gcm),
        "decompress": _seconds(verified * speeds.compressible_fraction, speeds.zstd3_decompress),
        "hash": _seconds(verified, speeds.blake3_1t),
        "write": _seconds(verified, speeds.write),
    }
    return {**parts, "cpu_s": sum(parts.values()), "wall_s": sum(parts.values()) / cores}


def speeds_dict(speeds: Speeds) -> dict[str, float]:
    return asdict(speeds)


def cores() -> int:
    return os.cpu_count() or 1
