"""When a schedule is due: pure functions of the schedule and explicit instants (no clock reads).

Schedules are wall-clock times in the policy's time zone, so "02:30 in Europe/Berlin" stays
02:30 local all year while its UTC instant moves with daylight saving time. Two days a year need
a rule, and these follow cron-like expectations (one run per scheduled slot, never zero, never
two):

- spring forward, the local time does not exist (02:30 on the day clocks jump 02:00 -> 03:00):
  the slot runs once, at the first valid instant after the gap (03:00 local): the least late
  it can be. (Python's own reading, fold=0, would give 03:30: later for no reason.)
- fall back, the local time happens twice (01:30 in New York on the first Sunday of November):
  the slot runs once, at the first occurrence.

Hourly starts are wall-clock too (window start + k * every_hours in local time), so an
"08:00, every 4 h" window starts at 08:00, 12:00, 16:00 on every day, DST or not.

All results are aware datetimes in UTC; every input instant must be aware.
"""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime, timedelta, tzinfo

from vmvault.policy.errors import PolicyError
from vmvault.policy.model import WEEKDAYS, Schedule

# Every valid schedule is due at least once in any 7 days; a day more absorbs DST shifts.
_HORIZON = timedelta(days=8)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise PolicyError(f"{name} must be a timezone-aware datetime, got {value.isoformat()}")


def _wall(instant: datetime, tz: tzinfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def local_to_utc(wall: datetime, tz: tzinfo) -> datetime:
    """A naive local wall-clock time in ``tz`` as an aware UTC instant.

    Ambiguous (fall back): the first occurrence. Nonexistent (spring forward): the first
    instant after the gap, i.e. the transition itself, found by bisection on whole seconds
    (tz database transitions fall on whole seconds).
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall(first, tz) == wall:
        return first
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    # In a gap: the earlier candidate reads before ``wall``, the later one after it.
    lo = int(min(first, second).timestamp())
    hi = int(max(first, second).timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(datetime.fromtimestamp(mid, UTC), tz) > wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _slots(schedule: Schedule, day: dt.date) -> list[datetime]:
    """The naive local start times that belong to ``day`` (an hourly window may spill into the
    next date)."""
    start = datetime.combine(day, schedule.start_time)
    if schedule.kind == "daily":
        return [start]
    if schedule.kind == "weekly":
        return [start] if schedule.days and WEEKDAYS[day.weekday()] in schedule.days else []
    assert schedule.every_hours is not None and schedule.window_hours is not None
    return [
        start + timedelta(hours=h) for h in range(0, schedule.window_hours, schedule.every_hours)
    ]


def due_times(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Every scheduled start in the half-open interval ``(start, end]``, ascending, in UTC.

    Half-open so consecutive calls over adjacent intervals never report a start twice.
    """
    _require_aware(start, "start")
    _require_aware(end, "end")
    if end <= start:
        return []
    tz = schedule.tzinfo
    # From the day before: a window opened yesterday evening can still have starts today.
    day = _wall(start, tz).date() - timedelta(days=1)
    last = _wall(end, tz).date()
    found: set[datetime] = set()
    while day <= last:
        for slot in _slots(schedule, day):
            instant = local_to_utc(slot, tz)
            if start < instant <= end:
                found.add(instant)
        day += timedelta(days=1)
    return sorted(found)


def next_due(schedule: Schedule, after: datetime) -> datetime:
    """The first scheduled start strictly after ``after``."""
    _require_aware(after, "after")
    horizon = after
    for _ in range(2):
        times = due_times(schedule, horizon, horizon + _HORIZON)
        if times:
            return times[0]
        horizon += _HORIZON
    raise AssertionError(f"schedule {schedule!r} has no start within two weeks")  # unreachable


def missed_runs(schedule: Schedule, last_run: datetime | None, now: datetime) -> datetime | None:
    """The one catch-up run owed after downtime: the latest start in ``(last_run, now]``.

    However many starts were missed, at most one job is owed (the latest), so a service coming
    back after three days runs one backup, not a burst of three that would jam the storage
    (seed, "Backup schedule"). ``None`` when up to date. ``last_run=None`` (never run) is also
    ``None``: a newly protected VM waits for its ``next_due`` instead of every VM of a new
    policy starting at once; an on-demand backup covers the impatient.
    """
    _require_aware(now, "now")
    if last_run is None:
        return None
    _require_aware(last_run, "last_run")
    if last_run >= now:
        return None
    # Only the latest start matters and there is one in every 8 days: look no further back.
    times = due_times(schedule, max(last_run, now - _HORIZON), now)
    return times[-1] if times else None
