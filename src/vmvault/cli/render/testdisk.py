"""Human output of `vmvault testdisk`."""

from __future__ import annotations

from vmvault import testdisk
from vmvault.cli.output import console, human_bytes


def print_created(stats: testdisk.DiskStats) -> None:
    console.print(
        f"created {stats.path}: {human_bytes(stats.size)}, {human_bytes(stats.written)} "
        f"written in {stats.extents} extents, {stats.seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )


def print_mutated(stats: testdisk.MutationStats) -> None:
    console.print(
        f"mutated {stats.path}: {stats.writes} writes of 64 KiB "
        f"({human_bytes(stats.bytes_written)}), {stats.seconds:.1f} s (seed {stats.seed})",
        highlight=False,
        soft_wrap=True,
    )
