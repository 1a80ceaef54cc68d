#!/usr/bin/env python3
"""Compression study: zstd level and way, measured on the chunks a backup would compress.

    .venv/bin/python bench/compression.py [--size 1G] [--inputs mix,fs] [--fs-budget 1400M]
                                          [--work DIR] [--keep] [--out bench/results]

Each input image is read as the engine reads it: 4 MiB blocks, 64 KiB chunks, holes
(SEEK_DATA/SEEK_HOLE) and all-zero chunks dropped, a chunk seen before (same BLAKE3 digest)
dropped as the vault's deduplication drops it. The new chunks of each block get the engine's
own probe (``vmvault.engine.blobs.compressible``) and are cut into runs by the engine's own
``runs_of``; each run is encoded by ``encode_blob`` (a compressed run larger than 97 % of
its input is stored raw, as the engine does). Then, for each setting, every compressible run
is compressed single-threaded (unless the setting says threads) and decompressed again,
timed with ``time.process_time`` (CPU of the whole process: less distorted by other work on
a shared machine than wall time, which is reported beside it).

The vault size of a setting is what the new chunks' blobs would take: every blob's payload
(compressed or raw) plus its sealing overhead (encoding byte, nonce, GCM tag), plus the
dictionary for the dictionary setting. Indexes, records and catalogs do not depend on the
setting and are left out; it is reported relative to the engine's default (level 3 runs).

Inputs: ``mix`` is the bench's generator (``vmvault.testdisk.create_disk``, seed 1, the image
``make bench`` uses); ``fs`` is a real ext4 image, ``mkfs.ext4 -d`` of a copy of system files
(shared libraries, Python, compilers' binaries, docs, man pages, translations: ``FS_SOURCES``,
each up to its budget, scaled to ``--fs-budget``), sized to keep 20 % free. Writes
``compression.json`` and ``compression.md`` to ``--out``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_proc
import bench_report
import blake3
import zstandard

from vmvault import testdisk
from vmvault.disks.source import RawDisk
from vmvault.engine.blobs import Compressor, compressible, encode_blob
from vmvault.engine.ranges import runs_of
from vmvault.vault.crypto import SEAL_OVERHEAD
from vmvault.vault.format import ENCODING_ZSTD
from vmvault.vault.vault import DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE

HERE = Path(__file__).resolve().parent
MB, MiB = 1e6, 1 << 20
BLOB_OVERHEAD = 1 + SEAL_OVERHEAD  # encoding byte + nonce + GCM tag (Vault.seal_blob)
DEFAULT = "3 (default)"
DICT_SIZE = 110 * 1024  # zstd's usual dictionary size
DICT_SAMPLES = 1024  # 64 MiB of chunks to train on, at most
FREE_SHARE = 0.20  # of the ext4 image, left free
# (source, budget in MB at --fs-budget 1400M): files are taken in sorted path order until
# the budget is spent, so the image is the same on the same machine.
FS_SOURCES = (
    ("/usr/lib/x86_64-linux-gnu", 500),
    ("/usr/lib/python3", 160),
    ("/usr/lib/python3.11", 60),
    ("/usr/lib/gcc", 120),
    ("/usr/lib/postgresql", 45),
    ("/usr/lib/git-core", 25),
    ("/usr/share/doc", 160),
    ("/usr/share/man", 100),
    ("/usr/share/locale", 170),
    ("/usr/share/perl", 25),
    ("/usr/share/vim", 35),
)


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


# -- what a backup would compress ------------------------------------------------------------


@dataclass
class Chunks:
    """The new chunks of one image, as the engine would store them."""

    runs: list[bytes] = field(default_factory=list)  # compressible runs, joined
    run_chunks: list[list[int]] = field(default_factory=list)  # chunk lengths of each run
    raw_runs: int = 0  # runs the probe judged incompressible: stored raw
    raw_bytes: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def compressible_bytes(self) -> int:
        return sum(len(r) for r in self.runs)

    def chunks(self) -> list[memoryview]:
        """Every compressible chunk on its own."""
        out = []
        for run, lengths in zip(self.runs, self.run_chunks, strict=True):
            view, pos = memoryview(run), 0
            for n in lengths:
                out.append(view[pos : pos + n])
                pos += n
        return out


def collect(path: Path) -> Chunks:
    """Read the image block by block and keep its new chunks in the engine's runs."""
    block, chunk = DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE
    probe = Compressor(3)
    zero = bytes(chunk)
    seen: set[bytes] = set()
    out = Chunks()
    counts = dict.fromkeys(("size", "read", "zero", "duplicate", "new", "compressible"), 0)
    buffer = bytearray(block)
    view = memoryview(buffer)
    with RawDisk.open(path) as disk:
        counts["size"] = disk.size
        for start in range(0, disk.size, block):
            length = min(block, disk.size - start)
            ranges = disk.data_ranges(start, start + length)
            if not ranges:
                continue
            has_data = [False] * (-(-length // chunk))
            for lo, hi in ranges:
                for c in range((lo - start) // chunk, -(-(hi - start) // chunk)):
                    has_data[c] = True
            new: list[memoryview] = []
            for c, data in enumerate(has_data):
                if not data:
                    continue
                lo = c * chunk
                n = min(chunk, length - lo)
                piece = view[lo : lo + n]
                disk.read_into(piece, start + lo)
                counts["read"] += n
                if piece == zero[:n]:
                    counts["zero"] += n
                    continue
                digest = blake3.blake3(piece).digest()
                if digest in seen:
                    counts["duplicate"] += n
                    continue
                seen.add(digest)
                counts["new"] += n
                new.append(piece)
            flags = [compressible(piece, probe) for piece in new]
            for lo, hi, compress in runs_of(flags):
                pieces = new[lo:hi]
                if compress:
                    out.runs.append(b"".join(pieces))
                    out.run_chunks.append([len(p) for p in pieces])
                    counts["compressible"] += sum(len(p) for p in pieces)
                else:
                    out.raw_runs += 1
                    out.raw_bytes += sum(len(p) for p in pieces)
    out.stats = counts
    return out


# -- the settings ----------------------------------------------------------------------------


@dataclass
class Setting:
    name: str
    make: Callable[[], zstandard.ZstdCompressor]
    per_chunk: bool = False
    dictionary: bool = False


def _params(level: int, **kw: Any) -> Callable[[], zstandard.ZstdCompressor]:
    def make() -> zstandard.ZstdCompressor:
        params = zstandard.ZstdCompressionParameters.from_level(level, **kw)
        return zstandard.ZstdCompressor(compression_params=params)

    return make


def _level(level: int, **kw: Any) -> Callable[[], zstandard.ZstdCompressor]:
    return lambda: zstandard.ZstdCompressor(level=level, **kw)


def settings() -> list[Setting]:
    out = [Setting(DEFAULT if level == 3 else str(level), _level(level)) for level in LEVELS]
    out += [
        Setting("1, hash_log 17", _params(1, hash_log=17)),
        Setting("3, long-distance matching", _params(3, enable_ldm=True)),
        Setting("3, per-chunk frames", _level(3), per_chunk=True),
        Setting("3, per-chunk frames + dictionary", _level(3), per_chunk=True, dictionary=True),
        Setting("3, threads=2", _level(3, threads=2)),
        # zstd's own job size at level 3 is 8 MiB (4 windows): a 4 MiB run is one job, so
        # threads=2 has nothing to split. 1 MiB jobs let two threads share a run.
        Setting("3, threads=2, 1 MiB jobs", _params(3, threads=2, job_size=MiB)),
    ]
    return out


LEVELS = (-1, 1, 2, 3, 4, 5, 6)


def train(chunks: list[memoryview], seed: int = 1) -> tuple[zstandard.ZstdCompressionDict, float]:
    """A dictionary trained on a sample of the image's compressible chunks, and its CPU s."""
    sample = random.Random(seed).sample(chunks, min(DICT_SAMPLES, len(chunks)))
    size = max(64 * 1024, min(DICT_SIZE, sum(len(c) for c in sample) // 20))
    cpu = time.process_time()
    trained = zstandard.train_dictionary(size, [bytes(c) for c in sample], level=3)
    return trained, time.process_time() - cpu


def measure(setting: Setting, data: Chunks, reps: int) -> dict[str, Any]:
    """Compress every compressible run (or chunk) and decompress it again; best of reps."""
    units: list[memoryview] = (
        data.chunks() if setting.per_chunk else [memoryview(r) for r in data.runs]
    )
    row: dict[str, Any] = {"setting": setting.name}
    compressor = Compressor(3)
    decompressor = zstandard.ZstdDecompressor()
    dict_bytes = 0
    if setting.dictionary:
        try:
            trained, train_cpu = train(units)
        except zstandard.ZstdError as exc:  # too few samples (a tiny image)
            return row | {"error": f"dictionary not trained: {exc}"}
        dict_bytes = len(trained.as_bytes())
        row |= {"dict_bytes": dict_bytes, "dict_train_cpu_s": round(train_cpu, 2)}
        compressor.zstd = zstandard.ZstdCompressor(level=3, dict_data=trained)
        decompressor = zstandard.ZstdDecompressor(dict_data=trained)
    else:
        compressor.zstd = setting.make()
    best: dict[str, float] = {}
    payloads: list[tuple[int, bytes | memoryview]] = []
    for _ in range(reps):
        payloads = []
        wall, cpu = time.perf_counter(), time.process_time()
        for unit in units:
            payloads.append(encode_blob([unit], True, compressor))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        best["cpu"] = min(best.get("cpu", cpu), cpu)
        best["wall"] = min(best.get("wall", wall), wall)
        frames = [p for e, p in payloads if e == ENCODING_ZSTD]
        wall, cpu = time.perf_counter(), time.process_time()
        for frame in frames:
            decompressor.decompress(frame)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        best["dcpu"] = min(best.get("dcpu", cpu), cpu)
        best["dwall"] = min(best.get("dwall", wall), wall)
    for (encoding, payload), unit in zip(payloads, units, strict=True):  # round trip
        if encoding == ENCODING_ZSTD and decompressor.decompress(payload) != unit:
            raise SystemExit(f"{setting.name}: a frame does not decompress to its input")
    size_in = sum(len(u) for u in units)
    size_out = sum(len(p) for _, p in payloads)
    vault = (
        size_out
        + len(payloads) * BLOB_OVERHEAD
        + data.raw_bytes
        + data.raw_runs * BLOB_OVERHEAD
        + dict_bytes
    )
    return row | {
        "in_bytes": size_in,
        "out_bytes": size_out,
        "ratio": round(size_in / size_out, 4) if size_out else None,
        "blobs": len(payloads),
        "stored_raw": sum(1 for e, _ in payloads if e != ENCODING_ZSTD),
        "cpu_s": round(best["cpu"], 3),
        "wall_s": round(best["wall"], 3),
        "mb_s_per_core": round(size_in / MB / best["cpu"], 1) if best["cpu"] else None,
        "mb_s_wall": round(size_in / MB / best["wall"], 1) if best["wall"] else None,
        "decompress_cpu_s": round(best["dcpu"], 3),
        "decompress_wall_s": round(best["dwall"], 3),
        "decompress_mb_s_per_core": round(size_in / MB / best["dcpu"], 1) if best["dcpu"] else None,
        "vault_bytes": vault,
    }


def study(label: str, image: Path, reps: int) -> dict[str, Any]:
    bench_proc.progress(label, f"reading {image.name}")
    cpu = time.process_time()
    data = collect(image)
    read_cpu = time.process_time() - cpu
    rows = []
    for setting in settings():
        bench_proc.progress(label, f"{setting.name}")
        rows.append(measure(setting, data, reps))
    base = next(r for r in rows if r["setting"] == DEFAULT)
    for row in rows:
        if "vault_bytes" in row:
            row["vault_vs_default"] = round(row["vault_bytes"] / base["vault_bytes"], 4)
            row["speed_vs_default"] = (
                round(base["cpu_s"] / row["cpu_s"], 3) if row["cpu_s"] else None
            )
    return {
        "image": data.stats,
        "raw_runs": data.raw_runs,
        "raw_bytes": data.raw_bytes,
        "compressible_runs": len(data.runs),
        "read_cpu_s": round(read_cpu, 2),
        "rows": rows,
        "conclusion": conclude(rows),
    }


def conclude(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest setting whose vault is no larger than the default's, and level 1's cost."""
    done = [r for r in rows if "vault_bytes" in r]
    by_name = {r["setting"]: r for r in done}
    base = by_name[DEFAULT]
    fitting = [r for r in done if r["vault_bytes"] <= base["vault_bytes"]]
    fastest = max(fitting, key=lambda r: r["mb_s_per_core"] or 0.0)
    smaller = [r for r in done if r["vault_bytes"] < base["vault_bytes"]]
    level1 = by_name.get("1")
    return {
        "fastest_no_larger": fastest["setting"],
        "fastest_no_larger_speed_vs_default": fastest["speed_vs_default"],
        "fastest_no_larger_vault_vs_default": fastest["vault_vs_default"],
        "smaller_than_default": [r["setting"] for r in smaller],
        "level1_vault_vs_default": level1["vault_vs_default"] if level1 else None,
        "level1_extra_mb": round((level1["vault_bytes"] - base["vault_bytes"]) / MB, 1)
        if level1
        else None,
        "level1_speed_vs_default": level1["speed_vs_default"] if level1 else None,
    }


# -- the inputs ------------------------------------------------------------------------------


def make_mix(work: Path, size: int) -> tuple[Path, dict[str, Any]]:
    image = work / "mix.img"
    stats = testdisk.create_disk(image, size, seed=1)
    what = f"vmvault.testdisk.create_disk(seed=1), {size / MiB:.0f} MiB"
    return image, {"what": what, "size": size, "generator": str(stats)}


def _kind(path: Path) -> str:
    name = path.name
    if name.endswith((".py", ".pyc", ".pyi")):
        return "python"
    if name.endswith((".gz", ".xz", ".bz2", ".zst", ".zip", ".jar", ".png", ".jpg", ".whl")):
        return "already compressed"
    if name.endswith(".mo"):
        return "translations (.mo)"
    with path.open("rb") as f:
        head = f.read(4)
    return "ELF (libraries, programs)" if head == b"\x7fELF" else "other (text, docs, data)"


def copy_tree(work: Path, budget: int) -> dict[str, Any]:
    """FS_SOURCES into work/tree, each up to its share of ``budget`` bytes."""
    tree = work / "tree"
    scale = budget / (sum(mb for _, mb in FS_SOURCES) * MB)
    kinds: dict[str, list[int]] = {}
    sources = []
    files = dirs = links = 0
    for source, mb in FS_SOURCES:
        root = Path(source)
        if not root.is_dir():
            continue
        allowance, used = mb * MB * scale, 0
        for top, subdirs, names in os.walk(root):
            subdirs.sort()
            here = Path(top)
            target = tree / here.relative_to("/")
            target.mkdir(parents=True, exist_ok=True)
            dirs += 1
            for name in sorted(names):
                src = here / name
                st = src.lstat()
                if stat.S_ISLNK(st.st_mode):
                    (target / name).symlink_to(os.readlink(src))
                    links += 1
                    continue
                if not stat.S_ISREG(st.st_mode) or used + st.st_size > allowance:
                    continue
                try:
                    shutil.copyfile(src, target / name)
                except OSError:  # unreadable: not part of the image
                    continue
                used += st.st_size
                files += 1
                tally = kinds.setdefault(_kind(src), [0, 0])
                tally[0] += 1
                tally[1] += st.st_size
        sources.append({"path": source, "bytes": used})
    return {
        "sources": sources,
        "files": files,
        "directories": dirs,
        "symlinks": links,
        "bytes": sum(s["bytes"] for s in sources),
        "kinds": {k: {"files": n, "bytes": b} for k, (n, b) in sorted(kinds.items())},
    }


def make_fs(work: Path, budget: int) -> tuple[Path, dict[str, Any]]:
    tree = copy_tree(work, budget)
    entries = (tree["files"] + tree["directories"] + tree["symlinks"]) * 5 // 4 + 1000
    allocated = bench_proc.tree_size(work / "tree")
    # the files' blocks, one 4 KiB block more each (tails, directories, extents), inode
    # tables (256 bytes), journal and metadata, then 20 % free
    used = allocated + entries * (4096 + 256) + 96 * MiB
    size = math.ceil(used / (1 - FREE_SHARE) / MiB) * MiB
    image = work / "fs.img"
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-N",
            str(entries),
            "-d",
            str(work / "tree"),
            str(image),
            f"{size // 1024}k",
        ],
        check=True,
    )
    shutil.rmtree(work / "tree")
    header = subprocess.run(
        ["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    blocks, free = int(fields["Block count"]), int(fields["Free blocks"])
    what = (
        f"ext4 (mkfs.ext4 -b 4096 -d) of {tree['files']} files, "
        f"{tree['bytes'] / MB:.0f} MB copied from {', '.join(s['path'] for s in tree['sources'])}"
    )
    return image, {
        "what": what,
        "size": size,
        "free_share": round(free / blocks, 3),
        "allocated": bench_proc.allocated(image),
        "tree": tree,
    }


# -- report ----------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    header = [
        "setting", "in MB", "out MB", "ratio", "CPU s", "MB/s/core", "wall s",
        "vault MB", "vault vs default", "speed vs default", "decomp MB/s/core",
    ]  # fmt: skip
    rows = []
    for r in result["rows"]:
        if "error" in r:
            rows.append([r["setting"], r["error"], *["-"] * (len(header) - 2)])
            continue
        name = r["setting"]
        if "dict_bytes" in r:
            name += f" ({r['dict_bytes'] // 1024} KiB, trained in {r['dict_train_cpu_s']} CPU s)"
        rows.append(
            [
                name,
                _f(r["in_bytes"] / MB),
                _f(r["out_bytes"] / MB),
                _f(r["ratio"], 3),
                _f(r["cpu_s"], 2),
                _f(r["mb_s_per_core"]),
                _f(r["wall_s"], 2),
                _f(r["vault_bytes"] / MB),
                _f(r["vault_vs_default"], 4),
                _f(r["speed_vs_default"], 2) + "x",
                _f(r["decompress_mb_s_per_core"]),
            ]
        )
    return bench_report.markdown_table(header, rows)


def conclusion_lines(label: str, result: dict[str, Any]) -> list[str]:
    c = result["conclusion"]
    lines = [
        f"- {label}: the fastest setting whose vault is no larger than the default's is "
        f"**{c['fastest_no_larger']}** ({_f(c['fastest_no_larger_speed_vs_default'], 2)}x "
        f"the default's compression speed, vault {_f(c['fastest_no_larger_vault_vs_default'], 4)}"
        " of the default's)."
    ]
    if c["smaller_than_default"]:
        lines.append(f"  Smaller vault than the default: {', '.join(c['smaller_than_default'])}.")
    if c["level1_vault_vs_default"] is not None:
        grow = (c["level1_vault_vs_default"] - 1) * 100
        lines.append(
            f"  Level 1 would be {_f(c['level1_speed_vs_default'], 2)}x as fast and make the "
            f"vault {grow:+.2f} % ({c['level1_extra_mb']:+.1f} MB) against the default."
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    load = "/".join(f"{x:.2f}" for x in report["loadavg_start"])
    load_end = "/".join(f"{x:.2f}" for x in report["loadavg_end"])
    out = [
        "# Compression: level and way",
        "",
        f"`{report['command']}` on {report['date']}: {m.get('nproc')} CPUs ({m.get('cpu')}), "
        f"zstandard {report['zstandard']} (libzstd {report['libzstd']}). "
        f"Load average (1/5/15 min) at start {load}, at end {load_end}: a shared machine, "
        "so speeds are CPU seconds (`time.process_time`), the best of "
        f"{report['args']['reps']}.",
        "",
        "In/out: the compressible new chunks (engine probe) and what they compress to; vault: "
        "every new chunk's blob (compressed or raw) with its sealing overhead, and the "
        "dictionary; MB = 10^6 bytes. Speeds are of uncompressed bytes per CPU second.",
        "",
    ]
    for label, result in report["inputs"].items():
        info = report["images"][label]
        s = result["image"]
        out += [
            f"## {label}: {info['what']}",
            "",
            f"Image {s['size'] / MB:.0f} MB: {s['read'] / MB:.0f} MB data read, "
            f"{s['zero'] / MB:.0f} MB zero chunks, {s['duplicate'] / MB:.0f} MB duplicates, "
            f"{s['new'] / MB:.0f} MB new chunks, of which {s['compressible'] / MB:.0f} MB in "
            f"{result['compressible_runs']} compressible runs and "
            f"{result['raw_bytes'] / MB:.0f} MB in {result['raw_runs']} raw runs.",
        ]
        if "tree" in info:
            kinds = ", ".join(
                f"{k} {v['files']} files {v['bytes'] / MB:.0f} MB"
                for k, v in info["tree"]["kinds"].items()
            )
            out += [
                f"Contents: {kinds}. Image {info['size'] / MiB:.0f} MiB, "
                f"{info['free_share'] * 100:.0f} % free.",
            ]
        out += ["", table(result), ""]
    out += ["## Conclusion (computed from the tables)", ""]
    for label, result in report["inputs"].items():
        out += conclusion_lines(label, result)
    if report.get("overall"):
        o = report["overall"]
        out += [
            "",
            "On every input, settings no larger than the default: "
            f"{', '.join(o['no_larger_everywhere'])}; "
            f"of these, the fastest on every input's worst case is **{o['fastest_everywhere']}** "
            f"({_f(o['fastest_everywhere_min_speed'], 2)}x the default at worst).",
        ]
    return "\n".join(out) + "\n"


def overall(inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Settings whose vault is no larger than the default's on every input."""
    names = [r["setting"] for r in next(iter(inputs.values()))["rows"]]
    fits, speed = [], {}
    for name in names:
        rows = [next(r for r in res["rows"] if r["setting"] == name) for res in inputs.values()]
        if all("vault_vs_default" in r and r["vault_vs_default"] <= 1.0 for r in rows):
            fits.append(name)
            speed[name] = min(r["speed_vs_default"] or 0.0 for r in rows)
    best = max(fits, key=lambda n: speed[n])
    return {
        "no_larger_everywhere": fits,
        "fastest_everywhere": best,
        "fastest_everywhere_min_speed": speed[best],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="1G", help="size of the bench-mix image (default 1G)")
    p.add_argument("--inputs", default="mix,fs", help="mix, fs or both (default mix,fs)")
    p.add_argument("--fs-budget", default="1400M", help="bytes of files in the ext4 image")
    p.add_argument("--reps", type=int, default=1, help="repetitions, best kept (default 1)")
    p.add_argument("--work", type=Path, default=HERE / "work" / "compression")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--out", type=Path, default=HERE / "results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = [i.strip() for i in args.inputs.split(",") if i.strip()]
    if not inputs or set(inputs) - {"mix", "fs"}:
        raise SystemExit("--inputs: mix, fs or mix,fs")
    if "fs" in inputs and shutil.which("mkfs.ext4") is None:
        raise SystemExit("mkfs.ext4 not found (e2fsprogs)")
    started, load_start = bench_report.utc_now(), os.getloadavg()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    images: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in inputs:
            if name == "mix":
                image, info = make_mix(args.work, parse_size(args.size))
            else:
                image, info = make_fs(args.work, parse_size(args.fs_budget))
            images[name] = info
            results[name] = study(name, image, args.reps)
            image.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    report = {
        "date": started.isoformat(),
        "command": " ".join(["bench/compression.py", *(sys.argv[1:] if argv is None else argv)]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": bench_report.machine_info(),
        "zstandard": zstandard.__version__,
        "libzstd": ".".join(str(v) for v in zstandard.ZSTD_VERSION),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "blob_overhead_bytes": BLOB_OVERHEAD,
        "images": images,
        "inputs": results,
        "overall": overall(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compression.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "compression.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
