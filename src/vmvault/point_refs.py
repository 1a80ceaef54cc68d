"""Point ids as people type them: a unique prefix names a point, and lists show the shortest
prefix that does (pure functions, shared by the CLI, the API and the dashboard).

A point id is ``<UTC time to the microsecond>Z-<8 hex>``; lists show it down to the second
at least (``20261129T124701``), longer only where two points share that second."""

from __future__ import annotations

from collections.abc import Iterable

from vmvault.errors import PointNotFound, UsageError

SHORTEST_REF = len("20261129T124701")  # the point's date and time to the second


class AmbiguousPoint(UsageError):
    """A prefix that more than one point id starts with."""

    code = "ambiguous_point"


def match_point(ids: Iterable[str], ref: str) -> str:
    """The one id of ``ids`` that ``ref`` is or begins; PointNotFound or AmbiguousPoint."""
    matches = sorted(i for i in ids if i.startswith(ref)) if ref else []
    if ref in matches:  # a whole id is never ambiguous
        return ref
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise PointNotFound(f"no recovery point {ref!r} in this vault")
    shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
    raise AmbiguousPoint(f"{ref!r} names {len(matches)} points ({shown}); give more of the id")


def short_refs(ids: Iterable[str]) -> dict[str, str]:
    """Each id's shortest prefix that no other id of ``ids`` starts with (at least
    ``SHORTEST_REF`` characters, and never cut: the whole id where nothing shorter is unique)."""
    ordered = sorted(set(ids))
    refs: dict[str, str] = {}
    for n, point_id in enumerate(ordered):
        # In sorted order the longest prefix shared with any other id is shared with a neighbour.
        shared = max(
            (_common(point_id, ordered[m]) for m in (n - 1, n + 1) if 0 <= m < len(ordered)),
            default=0,
        )
        refs[point_id] = point_id[: max(SHORTEST_REF, shared + 1)]
    return refs


def _common(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def latest_is_ambiguous(vms: list[str]) -> str:
    """Why ``latest`` was refused, given the VMs that have points."""
    named = ", ".join(vms[:5]) + (", ..." if len(vms) > 5 else "")
    return (
        f"'latest' names no single point: there are recovery points of {len(vms)} VMs"
        f" ({named}); give --vm NAME, or the point's id"
    )
