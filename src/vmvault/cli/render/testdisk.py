"""Human output of `vmvault testdisk`."""

from __future__ import annotations

from vmvault import testdisk
from vmvault.cli.output import console


def print_created(stats: testdisk.DiskStats) -> None:
    console.print(
        f"created {stats.path}: {stats.size} bytes, {stats.written} written "
        f"in {stats.extents} extents, {stats.seconds:.1f} s"
    )


def print_mutated(stats: testdisk.MutationStats) -> None:
    console.print(
        f"mutated {stats.path}: {stats.writes} writes of 64 KiB "
        f"({stats.bytes_written} bytes), {stats.seconds:.1f} s"
    )
