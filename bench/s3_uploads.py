"""Backup time to an S3 vault with 1 and with 4 pack uploaders (docs/ARCHITECTURE.md,
"Concurrency and memory").

Starts a SeaweedFS server on loopback (the test suite's ``tests/support/s3kit.py``: the
``weed`` binary of the dev extra), makes a test disk, then for each uploader count and
repetition backs the disk up, full, into a fresh vault in a fresh bucket, and reports the
medians. The store runs on the same machine and cores as vmvault: these are loopback
figures, where a remote store's latency (what several uploaders hide) is nearly absent.

    .venv/bin/python bench/s3_uploads.py --size 256M --reps 3
    .venv/bin/python bench/s3_uploads.py --size 256M --random   # incompressible bytes
    .venv/bin/python bench/s3_uploads.py --latency 0.03 --rate 20M  # a distant store

``--latency``/``--rate`` put tests/support/faultproxy.py between vmvault and the store:
each request waits the latency, plus its body's size at the rate, per connection (one TCP
stream's round trip and throughput to a store across a WAN).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/support: the SeaweedFS harness

from support.faultproxy import FaultProxy  # noqa: E402
from support.s3kit import WeedServer  # noqa: E402
from vmvault import testdisk  # noqa: E402
from vmvault.app.backup import run_backup  # noqa: E402
from vmvault.app.context import PASSPHRASE_ENV, Context  # noqa: E402
from vmvault.app.disks import DiskSpec  # noqa: E402
from vmvault.app.vaults import init_vault  # noqa: E402
from vmvault.backends.base import Backend  # noqa: E402
from vmvault.backends.retry import RetryingBackend  # noqa: E402
from vmvault.backends.url import open_s3  # noqa: E402


def _backend_with(uploaders: int) -> Backend:
    def factory(url: str) -> Backend:
        inner = open_s3(url)
        inner.parallel_writes = uploaders  # what Vault.pack_writer reads
        return RetryingBackend(inner)

    return factory  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256M", help="test disk size (default 256M)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--uploaders", default="1,4", help="uploader counts to compare")
    parser.add_argument(
        "--random", action="store_true", help="random bytes instead of testdisk's mix"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--rate", default=None, help="bytes/s per connection (e.g. 20M)")
    args = parser.parse_args()
    size = testdisk.parse_size(args.size)
    counts = [int(c) for c in args.uploaders.split(",")]
    work = Path(tempfile.mkdtemp(prefix="vmvault-s3bench-"))
    (work / "weed").mkdir()
    weed = WeedServer(work / "weed")
    try:
        weed.start()
        proxy = None
        endpoint = weed.server.endpoint
        if args.latency or args.rate:
            proxy = FaultProxy(endpoint)
            rate = testdisk.parse_size(args.rate) if args.rate else None
            proxy.slow(args.latency, rate)
            endpoint = proxy.endpoint
        for name, value in weed.server.env().items():
            os.environ[name] = value
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
        os.environ[PASSPHRASE_ENV] = "bench"
        image = work / "disk.img"
        if args.random:
            with open(image, "wb") as out:
                rng = random.Random(1)
                for _ in range(size // (1 << 20)):
                    out.write(rng.randbytes(1 << 20))
        else:
            testdisk.create_disk(image, size, seed=1)
        client = weed.server.client()
        results: dict[int, list[float]] = {c: [] for c in counts}
        stored: dict[int, int] = {}
        for rep in range(args.reps):
            for uploaders in counts:  # interleaved: a drift in the machine hits both
                bucket = f"bench-{uploaders}-{rep}"
                client.create_bucket(Bucket=bucket)
                ctx = Context(
                    f"s3://{bucket}/vault",
                    f"sqlite:///{work / f'{bucket}.db'}",
                    backend_factory=_backend_with(uploaders),
                )
                init_vault(ctx)
                started = time.perf_counter()
                point = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
                results[uploaders].append(time.perf_counter() - started)
                stored[uploaders] = point["disks"][0]["stats"]["stored"]
        kind = "random bytes" if args.random else "testdisk mix"
        path = "on loopback"
        if proxy is not None:
            path = f"through a proxy adding {args.latency * 1000:.0f} ms and {args.rate}/s"
            path += " per connection"
            proxy.close()
        print(f"full backup of a {args.size} disk ({kind}) to SeaweedFS {path}, ", end="")
        print(f"{os.cpu_count()} cores")
        for uploaders in counts:
            times = results[uploaders]
            median = statistics.median(times)
            print(
                f"  {uploaders} uploader(s): median {median:.2f} s "
                f"({', '.join(f'{t:.2f}' for t in times)}), "
                f"{stored[uploaders] / median / 1e6:.0f} MB/s stored"
            )
    finally:
        weed.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
