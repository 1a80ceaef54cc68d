"""Which recovery points to keep: grandfather-father-son retention as pure functions.

Input is plain data (``Point``: id, creation instant, VM) plus an explicit ``now`` and the
policy's time zone; output says, for every kept point, why it is kept. Anything not kept is to
be pruned. Rules, applied to each VM's points separately:

1. ``latest``: a VM's newest point is always kept, whatever the retention (never leave a
   protected VM with no backup at all).
2. ``future``: a point created after ``now`` is kept and takes part in no other rule: a clock
   running behind must never delete a backup it cannot place.
3. ``instant-restore``: points younger than ``instant_restore_days`` (elapsed time, not
   calendar days) are kept. Azure keeps these as snapshots beside the vault copy; vmvault has
   only the vault, so they are simply kept.
4. ``daily``: for each of the last ``daily_days`` calendar days (today included), the latest
   point of that day. Azure's enhanced policy likewise sends only the day's last backup to the
   vault.
5. ``weekly`` / ``monthly`` / ``yearly``: for each of the last N weeks (ISO, Monday to Sunday)
   / months / years, the current one included, one point: the latest point of the first day on
   or after the anchor (``weekly_day``; ``monthly_day``; ``monthly_day`` of ``yearly_month``)
   that has any point; if no point falls on or after the anchor, the latest point of the
   period. So a backup that failed on the anchor day is replaced by the next one, and an
   anchor the schedule never hits (weekly_day "sun" with backups on Wednesdays) still yields
   one point per period.
6. At most ``MAX_POINTS_PER_VM`` (9999) points per VM: beyond it the oldest kept points are
   pruned (the newest never are). Azure refuses new backups at the limit instead; a backup
   tool that stops backing up is worse than one that drops its oldest point. An immutable vault
   forbids early deletion, so there the cap is not applied and more points stay.

Days, weeks, months and years are calendar periods in the policy's time zone.

Every point a rule selects is the maximum of a fixed preference order within its period; a
subset that still holds it selects it again. Hence pruning is idempotent: planning again after
applying a plan prunes nothing more. And since every daily, weekly, monthly and yearly choice
is the latest point of some day, the intra-day extras are always the first to go.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Final, Literal, NamedTuple, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vmvault.policy.errors import PolicyError
from vmvault.policy.model import (
    IMMUTABILITY_STATES,
    MAX_POINTS_PER_VM,
    WEEKDAYS,
    Immutability,
    Retention,
)

Reason = Literal[
    "latest",
    "future",
    "instant-restore",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "stopped-retain",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)

# The counts that keep points, in the order they are reported.
RETENTION_COUNTS: Final = (
    "instant_restore_days",
    "daily_days",
    "weekly_weeks",
    "monthly_months",
    "yearly_years",
)


@dataclass(frozen=True, slots=True)
class Point:
    """A recovery point as retention sees it; ``created`` must be timezone-aware."""

    id: str
    created: datetime
    vm: str = ""


class PrunePlan(NamedTuple):
    """``keep`` maps each kept point id to its reasons; ``prune`` lists the rest, oldest first."""

    keep: dict[str, set[str]]
    prune: list[str]


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyError(f"unknown time zone {tz!r}") from None


def _order(point: Point) -> tuple[datetime, str]:
    # Ties on the instant are broken by id so results never depend on input order.
    return (point.created, point.id)


def _check(points: list[Point], now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise PolicyError(f"now must be a timezone-aware datetime, got {now.isoformat()}")
    seen: set[str] = set()
    for p in points:
        if p.created.tzinfo is None or p.created.utcoffset() is None:
            raise PolicyError(f"point {p.id}: created must be timezone-aware")
        if p.id in seen:
            raise PolicyError(f"point id {p.id} appears twice")
        seen.add(p.id)


def _pick(bucket: list[Point], day_of: dict[str, dt.date], anchor: dt.date) -> Point:
    """The period's representative (rule 5); ``bucket`` is in ascending ``_order``."""
    after = [p for p in bucket if day_of[p.id] >= anchor]
    if not after:
        return bucket[-1]
    first_day = min(day_of[p.id] for p in after)
    return [p for p in after if day_of[p.id] == first_day][-1]


def _per_period(
    past: list[Point],
    day_of: dict[str, dt.date],
    period_of: Callable[[dt.date], dt.date],
    oldest: dt.date,
    anchor_of: Callable[[dt.date], dt.date],
) -> list[Point]:
    """One point per period whose start (``period_of``) is on or after ``oldest``."""
    buckets: dict[dt.date, list[Point]] = defaultdict(list)
    for p in past:
        start = period_of(day_of[p.id])
        if start >= oldest:
            buckets[start].append(p)
    return [_pick(bucket, day_of, anchor_of(start)) for start, bucket in buckets.items()]


def _months_back(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 - months
    if index < 12:  # before year 1: everything is inside the window
        return dt.date.min
    return dt.date(index // 12, index % 12 + 1, 1)


def _select_vm(
    points: list[Point], retention: Retention, now: datetime, zone: tzinfo
) -> dict[str, set[str]]:
    ordered = sorted(points, key=_order)
    keep: dict[str, set[str]] = defaultdict(set)
    keep[ordered[-1].id].add("latest")
    instant = timedelta(days=retention.instant_restore_days)
    past: list[Point] = []
    for p in ordered:
        if p.created > now:
            keep[p.id].add("future")
            continue
        past.append(p)
        if now - p.created < instant:
            keep[p.id].add("instant-restore")
    if not past:
        return dict(keep)

    day_of = {p.id: p.created.astimezone(zone).date() for p in past}
    today = now.astimezone(zone).date()

    def mark(chosen: Iterable[Point], reason: Reason) -> None:
        for p in chosen:
            keep[p.id].add(reason)

    if retention.daily_days:
        mark(
            _per_period(
                past,
                day_of,
                period_of=lambda d: d,
                oldest=today - timedelta(days=retention.daily_days - 1),
                anchor_of=lambda d: d,  # one day: the anchor rule reduces to "latest"
            ),
            "daily",
        )
    if retention.weekly_weeks:
        monday = today - timedelta(days=today.weekday())
        offset = WEEKDAYS.index(retention.weekly_day)
        mark(
            _per_period(
                past,
                day_of,
                period_of=lambda d: d - timedelta(days=d.weekday()),
                oldest=monday - timedelta(weeks=retention.weekly_weeks - 1),
                anchor_of=lambda start: start + timedelta(days=offset),
            ),
            "weekly",
        )
    if retention.monthly_months:
        mark(
            _per_period(
                past,
                day_of,
                period_of=lambda d: d.replace(day=1),
                oldest=_months_back(today.replace(day=1), retention.monthly_months - 1),
                anchor_of=lambda start: retention.anchor_in_month(start.year, start.month),
            ),
            "monthly",
        )
    if retention.yearly_years:
        first_year = max(today.year - (retention.yearly_years - 1), dt.MINYEAR)
        mark(
            _per_period(
                past,
                day_of,
                period_of=lambda d: dt.date(d.year, 1, 1),
                oldest=dt.date(first_year, 1, 1),
                anchor_of=lambda start: retention.anchor_in_month(
                    start.year, retention.yearly_month
                ),
            ),
            "yearly",
        )
    return dict(keep)


def _select(
    points: list[Point], retention: Retention, now: datetime, tz: str | tzinfo, *, cap: bool
) -> dict[str, set[str]]:
    _check(points, now)
    zone = _zone(tz)
    by_vm: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        by_vm[p.vm].append(p)
    created = {p.id: p.created for p in points}
    keep: dict[str, set[str]] = {}
    for group in by_vm.values():
        chosen = _select_vm(group, retention, now, zone)
        if cap and len(chosen) > MAX_POINTS_PER_VM:
            oldest_first = sorted(chosen, key=lambda i: (created[i], i))
            for pid in oldest_first[: len(chosen) - MAX_POINTS_PER_VM]:
                del chosen[pid]
        keep.update(chosen)
    return keep


def select_kept(
    points: Iterable[Point], retention: Retention, now: datetime, tz: str | tzinfo = "UTC"
) -> dict[str, set[str]]:
    """Map each point to keep to its reasons (see the module docstring for the rules).

    Points of different ``vm`` values are judged separately; ids must be unique overall.
    The 9999-point cap applies; ``prune_plan`` is the variant that knows about stopped
    protection and immutable vaults.
    """
    return _select(list(points), retention, now, tz, cap=True)


def prune_plan(
    points: Iterable[Point],
    retention: Retention,
    now: datetime,
    tz: str | tzinfo = "UTC",
    *,
    stopped_retain: bool = False,
    immutable: Immutability = "off",
) -> PrunePlan:
    """What the next cleanup keeps and deletes.

    - ``stopped_retain`` ("stop protection, retain data"): everything is kept, indefinitely,
      each point with reason "stopped-retain" beside whatever rules would also keep it;
    - ``immutable`` "on" / "locked": no point is deleted before its retention ends, so the
      9999-point cap (an early deletion) is not applied; expired points are still pruned, as in
      an Azure immutable vault.
    """
    if immutable not in IMMUTABILITY_STATES:
        raise PolicyError(f"immutable must be one of {', '.join(IMMUTABILITY_STATES)}")
    pts = list(points)
    if stopped_retain:
        reasons = _select(pts, retention, now, tz, cap=False)
        return PrunePlan({p.id: reasons.get(p.id, set()) | {"stopped-retain"} for p in pts}, [])
    keep = _select(pts, retention, now, tz, cap=immutable == "off")
    prune = [p.id for p in sorted(pts, key=_order) if p.id not in keep]
    return PrunePlan(keep, prune)


def retention_shortened(old: Retention, new: Retention) -> list[str]:
    """The retention fields whose change can delete points the old settings promised to keep.

    A count (``RETENTION_COUNTS``) that goes down, and, conservatively, a moved anchor
    (``weekly_day``, ``monthly_day``, ``yearly_month``) while ``old`` kept points of that kind:
    a new anchor picks another point for a period that still holds several (say a weekly and a
    monthly one), and the old pick can lose its only reason to stay. Immutability refuses these
    changes and alerts report them, so erring towards "shortened" is the safe side.
    """
    shortened = [f for f in RETENTION_COUNTS if (getattr(new, f) or 0) < (getattr(old, f) or 0)]
    anchors = (
        ("weekly_day", bool(old.weekly_weeks)),
        ("monthly_day", bool(old.monthly_months or old.yearly_years)),
        ("yearly_month", bool(old.yearly_years)),
    )
    shortened += [f for f, used in anchors if used and getattr(new, f) != getattr(old, f)]
    return shortened
