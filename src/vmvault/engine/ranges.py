"""Byte ranges and runs: the small arithmetic the backup pipeline shares (pure)."""

from __future__ import annotations

from collections.abc import Sequence


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-empty ranges covering the same bytes."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def runs_of(flags: Sequence[bool]) -> list[tuple[int, int, bool]]:
    """Split a sequence into maximal runs of equal flags: (start, end, flag)."""
    runs = []
    i = 0
    while i < len(flags):
        j = i
        while j < len(flags) and flags[j] == flags[i]:
            j += 1
        runs.append((i, j, flags[i]))
        i = j
    return runs
