"""Running one timed command, and the file helpers every benchmark step needs.

A step's cost is the whole process tree's: ``os.wait4`` on the child (in bench_launch.py)
returns the CPU time of the child plus every descendant it reaped, and the largest max RSS
among them, which is what GNU ``time -v`` reported for the baseline, without needing it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

MiB = 1 << 20
READ_SIZE = 16 * MiB  # large reads: the page cache serves them at memory speed
LAUNCHER = Path(__file__).resolve().parent / "bench_launch.py"


@dataclass
class Measured:
    """Outcome of one timed command: exit code, wall and CPU seconds, peak RSS, output."""

    rc: int
    wall: float
    user: float
    sys: float
    maxrss: int  # bytes, of the largest process in the tree
    stdout: str
    stderr: str

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def stderr_tail(self, lines: int = 8) -> str:
        """The end of stderr (or stdout if stderr is empty): where tools say what went wrong."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])


def run_timed(
    argv: list[str],
    log_stem: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    discard_stdout: bool = False,
) -> Measured:
    """Run ``argv`` to completion; stdout/stderr go to ``log_stem``.out/.err (no pipes to drain).

    The command runs under bench_launch.py, which times it and reads its process tree's
    rusage (see there why not from here). ``discard_stdout`` sends stdout to /dev/null, as
    ``cmd > /dev/null`` does in a shell. A command that cannot start gets rc 127.
    """
    log_stem.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_stem.with_suffix(".out"), log_stem.with_suffix(".err")
    result_path = log_stem.with_suffix(".rusage.json")
    result_path.unlink(missing_ok=True)
    launcher = [sys.executable, "-S", "-I", str(LAUNCHER), str(result_path)]
    out_target = os.devnull if discard_stdout else out_path
    with open(out_target, "wb") as out, open(err_path, "wb") as err:
        done = subprocess.run(
            [*launcher, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd
        )
    stdout = "" if discard_stdout else out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    if done.returncode != 0 or not result_path.exists():
        return Measured(done.returncode or 1, 0.0, 0.0, 0.0, 0, stdout, stderr)
    r = json.loads(result_path.read_text())
    return Measured(r["rc"], r["wall"], r["user"], r["sys"], r["maxrss_kib"] * 1024, stdout, stderr)


def progress(label: str, message: str) -> None:
    """One progress line on stderr, so stdout carries only the final table."""
    print(f"[{label}] {message}", file=sys.stderr, flush=True)


def data_ranges(path: Path) -> Iterator[tuple[int, int]]:
    """(start, end) of each allocated range of a sparse file, found with SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    return
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, end
            pos = end
    finally:
        os.close(fd)


def warm_cache(path: Path, *, data_only: bool = False) -> None:
    """Read a file so the timed step starts from a warm page cache, as in the baseline.

    The whole file is read by default (holes too: restic and borg read them, and a hole's
    first read costs time). ``data_only`` reads only allocated ranges, for the huge sparse
    image whose holes would otherwise fill RAM with zero pages.
    """
    ranges = data_ranges(path) if data_only else iter([(0, path.stat().st_size)])
    buf = bytearray(READ_SIZE)
    with open(path, "rb", buffering=0) as f:
        for start, end in ranges:
            f.seek(start)
            left = end - start
            while left > 0:
                n = f.readinto(memoryview(buf)[: min(left, READ_SIZE)])
                if not n:
                    break
                left -= n


def file_digest(path: Path, limit: int | None = None) -> bytes:
    """BLAKE3 of a file's bytes (holes read as zeros), to check a restore without a full copy.

    ``limit`` hashes only the first ``limit`` bytes: a block device restored to can be
    larger than the disk written to it.
    """
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    view = memoryview(bytearray(READ_SIZE))
    left: float = math.inf if limit is None else limit
    with open(path, "rb", buffering=0) as f:
        while left > 0 and (n := f.readinto(view[: int(min(left, READ_SIZE))])):
            hasher.update(view[:n])
            left -= n
    return bytes(hasher.digest())


def tree_size(path: Path) -> int:
    """Sum of st_size of all files under ``path``: the `du -sb` the baseline used."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def allocated(path: Path) -> int:
    """Bytes a file occupies on disk: shows whether a restore kept the holes."""
    return path.stat().st_blocks * 512


def copy_image(src: Path, dst: Path) -> None:
    """Copy holes as holes and data as data, so each run starts from identical bytes and layout.

    ``cp --sparse=always`` (and coreutils 9's ``auto``) would turn the generator's written
    zero runs into holes, and then no tool would read the 10 % of allocated zeros that a
    freshly generated image has (as the baseline's did).
    """
    dst.unlink(missing_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        os.ftruncate(fout.fileno(), os.fstat(fin.fileno()).st_size)
        for start, end in data_ranges(src):
            pos = start
            while pos < end:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), end - pos, pos, pos)
                if n <= 0:
                    raise OSError(f"copy_file_range stopped at {pos} of {src}")
                pos += n
