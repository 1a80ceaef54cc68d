"""The budget of mapped pages of a process reading the host's chunk index (vault/localindex.py).

The index's files are mapped, not read: a process's own memory does not grow with the vault.
But its RSS counts the pages of the mapped index it has touched (the kernel's page cache,
shared and reclaimable, but counted). Every so often (indexwrite.TRIM_EVERY lookups, and
between slices of a write) a process reads how many file pages it has mapped
(/proc/self/statm) and, past MAPPED_BUDGET, lets go of the data file's (madvise
MADV_DONTNEED: they stay in the page cache; a later touch is a minor fault, ~2-10 µs here).
So a worker's RSS stays its own memory + the filter (<= 256 MiB) + the budget, however big
the vault, and a vault whose index fits the budget never pays a fault.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
from pathlib import Path
from typing import Any

MAPPED_BUDGET = 384 << 20  # all of the process's file pages: the filter's and libraries' too
# The budget in MiB, for a host that prefers faster lookups to a bounded RSS ("0": never
# trim: a worker maps as much of the index as it touches; the kernel still reclaims it).
MAPPED_BUDGET_ENV = "VMVAULT_INDEX_MAPPED_MB"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def over_budget() -> bool:
    """Whether this process maps more file pages than the budget allows (never without one)."""
    budget = _mapped_budget()
    return bool(budget) and _mapped_file_bytes() > budget


def _mapped_budget() -> int:
    """MAPPED_BUDGET, or $VMVAULT_INDEX_MAPPED_MB (0: no budget); a bad value is ignored."""
    text = os.environ.get(MAPPED_BUDGET_ENV, "").strip()
    if text.isdigit():
        return int(text) << 20
    return MAPPED_BUDGET


def _mapped_file_bytes() -> int:
    """Resident shared (file-backed) memory of this process, from /proc/self/statm."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def mapping_of(path: Path) -> tuple[int, int] | None:
    """Where ``path`` is mapped in this process (Linux's /proc/self/maps), or None."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n").removesuffix(" (deleted)") == target:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    return start, end
    except OSError:
        pass
    return None


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def madvise_dontneed(start: int, length: int) -> None:
    """madvise(2) through libc: LMDB maps the file itself, so there is no Python mmap object
    to call it on. A failure leaves the pages mapped (more RSS, nothing lost)."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), mmap.MADV_DONTNEED)
