#!/usr/bin/env python3
"""The chunk index at vault scale: open time, lookups and memory of a worker.

    .venv/bin/python bench/index_scale.py [--chunks 20M] [--workdir DIR] [--lookups 200000]

Builds a synthetic vault (local backend) whose index objects name ``--chunks`` chunks: sealed
index objects exactly as a backup writes them (64 packs of 256 chunks each: 16 MiB packs of
64 KiB chunks), and an empty file per pack so the pack listing is real. Chunk ids are random,
as keyed BLAKE3 ids are. Then, each in a fresh process:

- first open: the host has no index yet and absorbs every index object (once per host);
- open: the next process (the steady state: nothing new);
- daily open: after one more index object (a day's backup), which is the only one read;
- lookups: claimable() of ids the vault has and of new ones, get() of present ones.

Each reports wall time and memory from /proc: peak RSS, and at the end RSS split into
anonymous memory (the process's own) and file pages (the mapped index: the kernel's page
cache, shared by every process of the host and reclaimable). 160 million chunks is 10 TB of
unique data; the script runs any size the disk allows (about 190 bytes per chunk: index
objects plus the host's index).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PASSPHRASE = "index scale bench"
CHUNKS_PER_PACK = 256
PACKS_PER_OBJECT = 64


def parse_count(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


# -- building the synthetic vault -------------------------------------------------------------


def build(vault_dir: Path, chunks: int, sample: Path, seed: int = 1) -> dict[str, Any]:
    import blake3
    import numpy as np
    import zstandard

    from vmvault.backends.local import LocalBackend
    from vmvault.vault.format import AAD_INDEX, FORMAT_VERSION, INDEX_ENTRY, INDEX_PACK
    from vmvault.vault.packs import index_key, pack_key
    from vmvault.vault.vault import Vault

    started = time.monotonic()
    backend = LocalBackend(vault_dir, fsync=False)
    vault = Vault.init(backend, PASSPHRASE)
    rng = np.random.default_rng(seed)
    entry = np.dtype(
        [
            ("id", "V32"),
            ("kind", "u1"),
            ("offset", "<u4"),
            ("length", "<u4"),
            ("start", "<u4"),
            ("raw", "<u4"),
        ]
    )
    assert entry.itemsize == INDEX_ENTRY.size
    compressor = zstandard.ZstdCompressor(level=3)
    per_object = CHUNKS_PER_PACK * PACKS_PER_OBJECT
    written = objects = packs = 0
    kept = []
    while written < chunks:
        n = min(per_object, chunks - written)
        ids = rng.bytes(32 * n)
        arr = np.zeros(n, entry)
        arr["id"] = np.frombuffer(ids, "V32")
        arr["kind"] = 1
        slot = np.arange(n) % CHUNKS_PER_PACK
        arr["offset"] = 5 + slot * 40_000  # one chunk per blob, 40 KB sealed (compressed)
        arr["length"] = 40_000
        arr["raw"] = 65_536
        parts = [bytes((FORMAT_VERSION,))]
        for lo in range(0, n, CHUNKS_PER_PACK):
            hi = min(lo + CHUNKS_PER_PACK, n)
            pack_id = rng.bytes(32)
            parts.append(INDEX_PACK.pack(pack_id, hi - lo))
            parts.append(arr[lo:hi].tobytes())
            path = vault_dir / pack_key(pack_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()  # listed, never read: the index is what is measured
            packs += 1
        sealed = vault.cipher.seal(compressor.compress(b"".join(parts)), AAD_INDEX)
        backend.put(index_key(blake3.blake3(sealed).digest()), sealed)
        kept.append(ids[: 32 * 64])  # 64 ids of each object for the lookups
        written += n
        objects += 1
    sample.write_bytes(b"".join(kept))
    return {
        "chunks": chunks,
        "index_objects": objects,
        "packs": packs,
        "index_objects_bytes": sum(f.stat().st_size for f in (vault_dir / "index").iterdir()),
        "build_seconds": round(time.monotonic() - started, 1),
        "vault_id": vault.config.vault_id,
    }


def add_daily_object(vault_dir: Path, seed: int) -> None:
    """One more index object, as a day's backup of 1 GiB of changes writes it."""
    import random

    from vmvault.backends.local import LocalBackend
    from vmvault.vault.format import PackEntry
    from vmvault.vault.packs import pack_key
    from vmvault.vault.vault import Vault

    backend = LocalBackend(vault_dir, fsync=False)
    vault = Vault.open(backend, PASSPHRASE, load_index=False)
    rng = random.Random(seed)
    packs = []
    for _ in range(PACKS_PER_OBJECT):
        pack_id = rng.randbytes(32)
        (vault_dir / pack_key(pack_id)).parent.mkdir(parents=True, exist_ok=True)
        (vault_dir / pack_key(pack_id)).touch()
        entries = [
            PackEntry(rng.randbytes(32), 1, 5 + i * 40_000, 40_000, 0, 65_536)
            for i in range(CHUNKS_PER_PACK)
        ]
        packs.append((pack_id, entries))
    vault.write_index_object(packs)


# -- measuring, in a fresh process -------------------------------------------------------------


def memory() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def measure(vault_dir: Path, sample: Path, lookups: int) -> dict[str, Any]:
    import random

    from vmvault.backends.local import LocalBackend
    from vmvault.vault.vault import Vault

    out: dict[str, Any] = {"before_open": memory()}
    started, cpu = time.monotonic(), time.process_time()
    vault = Vault.open(LocalBackend(vault_dir, fsync=False), PASSPHRASE)
    out["open_seconds"] = round(time.monotonic() - started, 3)
    out["open_cpu_seconds"] = round(time.process_time() - cpu, 3)  # the machine may be shared
    store = vault._local_index
    assert store is not None
    out["rebuilt"] = store.rebuilt
    out["absorbed"] = store.absorbed_now
    out["after_open"] = memory()
    if lookups:
        data = sample.read_bytes()
        have = [data[i : i + 32] for i in range(0, len(data), 32)]
        rng = random.Random(2)
        present = [rng.choice(have) for _ in range(lookups)]
        new = [rng.randbytes(32) for _ in range(lookups)]
        index = vault.index
        for name, ids, fn in (
            ("claimable_new_us", new, index.claimable),
            ("claimable_present_us", present, index.claimable),
            ("get_present_us", present, index.get),
            ("available_present_us", present, index.available),
        ):
            t = time.perf_counter()
            answers = [fn(c) for c in ids]
            out[name] = round((time.perf_counter() - t) / len(ids) * 1e6, 2)
            if name == "claimable_new_us":
                out["new_claimable"] = sum(bool(a) for a in answers)
            elif name != "get_present_us":
                assert all(answers), name
        out["after_lookups"] = memory()
        out["index_entries"] = len(index)
    return out


def run_child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", default="20M")
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--workdir", type=Path, default=HERE / "work" / "index-scale")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--keep", action="store_true", help="keep the vault and index afterwards")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        vault_dir, sample, lookups = args.child
        print(json.dumps(measure(Path(vault_dir), Path(sample), int(lookups))))
        return 0
    chunks = parse_count(args.chunks)
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    vault_dir, sample, cache = work / "vault", work / "sample.bin", work / "cache"
    env = {**os.environ, "VMVAULT_CACHE_DIR": str(cache)}
    print(f"building a vault of {chunks:,} chunks in {work}", flush=True)
    report: dict[str, Any] = {"built": build(vault_dir, chunks, sample)}
    print(json.dumps(report["built"]), flush=True)
    steps = [("first_open", 0), ("open", args.lookups), ("open_again", 0)]
    for step, lookups in steps:
        report[step] = run_child([str(vault_dir), str(sample), str(lookups)], env)
        print(step, json.dumps(report[step]), flush=True)
    add_daily_object(vault_dir, seed=3)
    report["daily_open"] = run_child([str(vault_dir), str(sample), str(args.lookups)], env)
    print("daily_open", json.dumps(report["daily_open"]), flush=True)
    index_dir = cache / report["built"]["vault_id"] / "chunk-index"
    report["index_bytes"] = sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file())
    report["index_blocks"] = sum(
        f.stat().st_blocks * 512 for f in index_dir.rglob("*") if f.is_file()
    )
    b, o, d = report["built"], report["open"], report["daily_open"]
    lines = [
        f"## Chunk index at {chunks:,} chunks ({chunks * 65536 / 1e12:.2f} TB unique at 64 KiB)",
        "",
        f"- vault: {b['index_objects']} index objects ({b['index_objects_bytes'] / 1e9:.2f} GB), "
        f"{b['packs']} packs; host index {report['index_blocks'] / 1e9:.2f} GB on disk "
        f"({report['index_blocks'] / chunks:.0f} B per chunk)",
        f"- first open (absorbs every index object): {report['first_open']['open_seconds']:.1f} s"
        f" ({report['first_open']['open_cpu_seconds']:.1f} s CPU),"
        f" peak RSS {mib(report['first_open']['after_open']['VmHWM'])} MiB"
        f" (anonymous {mib(report['first_open']['after_open']['RssAnon'])} MiB at the end)",
        f"- open: {o['open_seconds']:.2f} s ({o['open_cpu_seconds']:.2f} s CPU), RSS after it "
        f"{mib(o['after_open']['VmRSS'])} MiB (anonymous {mib(o['after_open']['RssAnon'])} MiB);"
        f" again: {report['open_again']['open_seconds']:.2f} s",
        f"- after {args.lookups:,} lookups of each kind peak RSS "
        f"{mib(o['after_lookups']['VmHWM'])} MiB (anonymous "
        f"{mib(o['after_lookups']['RssAnon'])} MiB, mapped index pages "
        f"{mib(o['after_lookups']['RssFile'])} MiB)",
        f"- daily open (one new index object): {d['open_seconds']:.2f} s "
        f"({d['open_cpu_seconds']:.2f} s CPU), {d['absorbed']} index object read",
        f"- lookups (µs): claimable new {o['claimable_new_us']}, claimable present "
        f"{o['claimable_present_us']}, get {o['get_present_us']}, available "
        f"{o['available_present_us']}; new ids claimable by mistake: {o['new_claimable']}",
    ]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index_scale.json").write_text(json.dumps(report, indent=2))
    (args.out / "index_scale.md").write_text(text)
    print(text)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
