"""Sizes as people read them, shared by the CLI and the dashboard; and the least rate a
limit may name (light to import: the CLI's options need it before any use case)."""

from __future__ import annotations

# The least rate (MB/s, requests/s) a limit may name: below it a job would crawl for days
# (1e-9 is surely a typo), like --limit-rate's minimum.
MIN_RATE = 0.1


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, one decimal; whole bytes below 1 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
