"""Sizes, rates and durations as people read them, shared by the CLI, the planner's output,
the scheduler's log and the dashboard (whose app.js writes the same); and the least rate a
limit may name (light to import: the CLI's options need it before any use case).

One convention: binary (IEC) units, 1 KiB = 1024 bytes, for sizes and for rates alike."""

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


def human_rate(n_bytes: float, seconds: float) -> str:
    """Bytes over seconds as '57.2 MiB/s'; '-' when no time passed (no rate to tell)."""
    if seconds <= 0:
        return "-"
    return f"{human_bytes(n_bytes / seconds)}/s"


def human_duration(seconds: float) -> str:
    """A duration as people say it: 0 s, 42 min, 5.2 h, 3.1 days."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def measured_duration(seconds: float) -> str:
    """A measured time of a job, shown as precisely as it is short: 0.26 s, 2.1 s, then as
    ``human_duration`` (a mean of 0.26 s is not '0 s')."""
    if 0 < seconds < 1:
        return f"{seconds:.2f} s"
    if 0 < seconds < 10:
        return f"{seconds:.1f} s"
    return human_duration(seconds)


def _trimmed(value: float) -> str:
    """Up to two decimals, without trailing zeros: 30, 1.25, 8.75, 2.5."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def exact_duration(seconds: float) -> str:
    """A set duration (an RPO) exactly as configured, not rounded as ``human_duration``
    rounds a measured one: 45 min, 1.25 h, 30 h (hours up to two days), 8.75 days."""
    if seconds < 3600:
        return f"{_trimmed(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{_trimmed(seconds / 3600)} h"
    return f"{_trimmed(seconds / 86400)} days"


# The inventory's rates (`disk_mb_per_s`, `egress_mb_per_s`, `--limit-rate`) and the
# planner's JSON (`*_mb_s`) stay in MB/s, 10^6 bytes a second, as the seed's figures are
# given (60 MB/s a disk, 160 Mbps); people are shown them in the one convention above.
MB = 1_000_000


def mib_per_s(mb_per_s: float) -> float:
    """A rate in MB/s (10^6 bytes) as MiB/s: 60 -> 57.2."""
    return mb_per_s * MB / 1024**2


def human_mb_rate(mb_per_s: float) -> str:
    """A rate in MB/s (10^6 bytes) as people read it: 60 -> '57.2 MiB/s'."""
    return human_rate(mb_per_s * MB, 1.0)
