"""Requests a backup makes to an object store, with and without the local cache.

Starts a SeaweedFS server (the tests' ``weed``, tests/support/s3kit.py) on loopback, makes a
test disk, and backs it up into an S3 vault: a full backup (cold cache: a new vault), a
full again (``--full``, warm cache), incrementals of 1 % changed with a warm cache, a cold
one (cache emptied) and none (``--no-cache``). Each step is a new Context, as each CLI
command is; its counter (backends/metering.py) holds every request it made.

    .venv/bin/python bench/s3_requests.py [--size 256M] [--percent 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import s3kit
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.vaults import init_vault, local_cache
from vmvault.backends.metering import RequestCounter


def _row(step: str, counter: RequestCounter, seconds: float) -> str:
    ops = counter.ops()
    gets = counter.by_kind()
    detail = ", ".join(
        f"{kind} {sum(n for op, n in per.items() if op == 'get')}"
        for kind, per in sorted(gets.items())
        if per.get("get")
    )
    writes = ops.get("put", 0) + ops.get("create", 0)
    return (
        f"| {step} | {counter.total()} | {ops.get('get', 0)} ({detail}) | {ops.get('list', 0)} "
        f"| {writes} | {counter.total() - ops.get('get', 0) - ops.get('list', 0) - writes} "
        f"| {counter.bytes_in / 2**20:.1f} | {counter.bytes_out / 2**20:.1f} | {seconds:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="test disk size (default 256M)")
    parser.add_argument("--percent", type=float, default=1.0, help="changed per incremental")
    args = parser.parse_args()
    size = testdisk.parse_size(args.size)
    base = Path(tempfile.mkdtemp(prefix="vmvault-requests-"))
    os.environ.update(VMVAULT_PASSPHRASE="bench", VMVAULT_CACHE_DIR=str(base / "cache"))
    proc, server = s3kit._start(base)
    try:
        s3kit._wait_ready(proc, server)
        os.environ.update(server.env())
        server.client().create_bucket(Bucket="bench")
        image = base / "disk.img"
        testdisk.create_disk(image, size, seed=1)
        catalog = f"sqlite:///{base / 'catalog.db'}"
        init_vault(Context("s3://bench/vault", catalog))
        rows = []

        def step(name: str, *, full: bool = False, cache: bool | None = None) -> None:
            ctx = Context("s3://bench/vault", catalog, cache=cache)
            started = time.perf_counter()
            run_backup(ctx, "vm", [DiskSpec("d0", str(image))], full=full)
            rows.append(_row(name, ctx.requests, time.perf_counter() - started))

        step("full, cold cache (new vault)")
        step("full again (--full), warm cache", full=True)
        for seed, (name, cache, clear) in enumerate(
            [
                ("incremental, warm cache", None, False),
                ("incremental, cold cache (emptied)", None, True),
                ("incremental, no cache", False, False),
                ("incremental, warm cache, again", None, False),
            ],
            start=2,
        ):
            testdisk.mutate_disk(image, args.percent, seed=seed)
            if clear:
                local_cache(None, clear=True)
            step(name, cache=cache)
        cached = local_cache(None)
        print(f"{args.size} disk, {args.percent:g} % changed per incremental (SeaweedFS)\n")
        print(
            "| backup | requests | get (by object) | list | put/create | other | MiB in "
            "| MiB out | s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print(f"\ncache after: {cached['entries']} copies, {cached['size'] / 2**20:.1f} MiB")
    finally:
        s3kit._stop(proc)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
