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

A VM may start later than its policy says (its own ``start`` in the inventory, e.g. as
proposed by ``vmvault plan --stagger``): the policy's every slot is then delayed by the same
wall-clock amount, the delay from the policy's time to the VM's, read forwards (a 22:00 policy
with ``start = "01:30"`` runs at 01:30 the next morning; a weekly Monday slot on Tuesday).
``Timetable`` is a schedule with that delay: the scheduler and the planner both ask it when a
VM's backup starts, so the two cannot disagree.

All results are aware datetimes in UTC; every input instant must be aware.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from vmvault.policy.errors import PolicyError
from vmvault.policy.model import WEEKDAYS, Schedule, as_hhmm

# Every valid schedule is due at least once in any 7 days; a day more absorbs DST shifts.
_HORIZON = timedelta(days=8)
_DAY = timedelta(days=1)
# A daily or weekly backup should be done before the next day's one would start.
DAILY_DEADLINE = timedelta(hours=24)


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


def _slots(schedule: Schedule, day: dt.date) -> list[tuple[datetime, datetime]]:
    """The naive local start times that belong to ``day``, each with the start of its window
    (an hourly window may spill into the next date)."""
    start = datetime.combine(day, schedule.start_time)
    if schedule.kind == "daily":
        return [(start, start)]
    if schedule.kind == "weekly":
        on = schedule.days and WEEKDAYS[day.weekday()] in schedule.days
        return [(start, start)] if on else []
    assert schedule.every_hours is not None and schedule.window_hours is not None
    return [
        (start + timedelta(hours=h), start)
        for h in range(0, schedule.window_hours, schedule.every_hours)
    ]


def max_delay(schedule: Schedule) -> timedelta:
    """How far a VM may delay the policy's slots (exclusive): any time of the day for daily and
    weekly schedules; for an hourly one, so little that its last start stays inside the
    window."""
    if schedule.kind != "hourly":
        return _DAY
    assert schedule.every_hours is not None and schedule.window_hours is not None
    last = len(range(0, schedule.window_hours, schedule.every_hours)) - 1
    return timedelta(hours=schedule.window_hours - last * schedule.every_hours)


def start_delay(schedule: Schedule, start: str) -> timedelta:
    """The delay that makes the policy's first start of a day fall at ``start`` (HH:MM, local),
    counted forwards from the policy's time; a ``PolicyError`` if the schedule does not allow
    it."""
    hours, minutes = as_hhmm(start).split(":")
    wanted = int(hours) * 60 + int(minutes)
    own = schedule.start_time.hour * 60 + schedule.start_time.minute
    delay = timedelta(minutes=(wanted - own) % (24 * 60))
    if delay >= max_delay(schedule):
        latest = datetime.combine(dt.date(2000, 1, 1), schedule.start_time) + max_delay(schedule)
        raise PolicyError(
            f"start {start} is outside the window of the {schedule.kind} schedule at "
            f"{schedule.time}: the first start must be before {latest:%H:%M} so the last one "
            "stays inside the window"
        )
    return delay


@dataclass(frozen=True)
class Run:
    """One backup a timetable asks for."""

    slot: datetime  # the policy's own start this run stands for (UTC)
    start: datetime  # when the VM's backup starts: the slot, delayed (UTC)
    deadline: datetime  # done by then: the window's end (hourly), else 24 h after the start


def _runs(schedule: Schedule, first: dt.date, last: dt.date, delay: timedelta) -> list[Run]:
    """The runs of the policy's slots on the local dates ``first`` to ``last``, ascending."""
    tz = schedule.tzinfo
    runs = []
    day = first
    while day <= last:
        for slot, window in _slots(schedule, day):
            start = local_to_utc(slot + delay, tz)
            if schedule.window_hours is not None:
                deadline = local_to_utc(window + timedelta(hours=schedule.window_hours), tz)
            else:
                deadline = start + DAILY_DEADLINE
            runs.append(Run(local_to_utc(slot, tz), start, deadline))
        day += _DAY
    return sorted(runs, key=lambda r: r.start)


def slot_runs(
    schedule: Schedule, start: datetime, end: datetime, *, delay: timedelta = timedelta(0)
) -> list[Run]:
    """The runs whose policy slot lies in the half-open interval ``(start, end]``: tonight's
    backups, however late a VM's delay puts them."""
    _require_aware(start, "start")
    _require_aware(end, "end")
    if end <= start:
        return []
    tz = schedule.tzinfo
    runs = _runs(schedule, _wall(start, tz).date() - _DAY, _wall(end, tz).date(), delay)
    return [r for r in runs if start < r.slot <= end]


def due_times(
    schedule: Schedule, start: datetime, end: datetime, *, delay: timedelta = timedelta(0)
) -> list[datetime]:
    """Every scheduled start in the half-open interval ``(start, end]``, ascending, in UTC,
    each slot delayed by ``delay``.

    Half-open so consecutive calls over adjacent intervals never report a start twice.
    """
    _require_aware(start, "start")
    _require_aware(end, "end")
    if end <= start:
        return []
    tz = schedule.tzinfo
    # From the day before: a window opened yesterday evening can still have starts today; a
    # delay of up to a day reaches one day further.
    first = _wall(start, tz).date() - (2 * _DAY if delay else _DAY)
    runs = _runs(schedule, first, _wall(end, tz).date(), delay)
    return sorted({r.start for r in runs if start < r.start <= end})


def next_due(schedule: Schedule, after: datetime, *, delay: timedelta = timedelta(0)) -> datetime:
    """The first scheduled start strictly after ``after``."""
    _require_aware(after, "after")
    horizon = after
    for _ in range(2):
        times = due_times(schedule, horizon, horizon + _HORIZON, delay=delay)
        if times:
            return times[0]
        horizon += _HORIZON
    raise AssertionError(f"schedule {schedule!r} has no start within two weeks")  # unreachable


def missed_runs(
    schedule: Schedule,
    last_run: datetime | None,
    now: datetime,
    *,
    delay: timedelta = timedelta(0),
) -> datetime | None:
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
    times = due_times(schedule, max(last_run, now - _HORIZON), now, delay=delay)
    return times[-1] if times else None


@dataclass(frozen=True)
class Timetable:
    """A policy's schedule as one VM follows it: the policy's slots, delayed by the VM's own
    start. The one answer to "when does this VM's backup start", for the scheduler and the
    planner alike."""

    schedule: Schedule
    delay: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if not timedelta(0) <= self.delay < max_delay(self.schedule):
            raise PolicyError(
                f"a start {self.delay} after {self.schedule.time} is outside the window of the "
                f"{self.schedule.kind} schedule (at most {max_delay(self.schedule)} later)"
            )

    @classmethod
    def of(cls, schedule: Schedule, start: str | None = None) -> Timetable:
        """The timetable of a VM whose own start (HH:MM) is ``start``, if it has one."""
        return cls(schedule, start_delay(schedule, start) if start else timedelta(0))

    @property
    def start(self) -> str:
        """The first start of a day as HH:MM local: the VM's own start, or the policy's."""
        first = datetime.combine(dt.date(2000, 1, 1), self.schedule.start_time) + self.delay
        return f"{first:%H:%M}"

    @property
    def latest_delay(self) -> timedelta:
        """The largest delay this schedule allows (exclusive)."""
        return max_delay(self.schedule)

    def delayed(self, extra: timedelta) -> Timetable:
        """The same schedule started ``extra`` later (whole minutes)."""
        return Timetable(self.schedule, self.delay + extra)

    def due_times(self, start: datetime, end: datetime) -> list[datetime]:
        return due_times(self.schedule, start, end, delay=self.delay)

    def runs(self, start: datetime, end: datetime) -> list[Run]:
        return slot_runs(self.schedule, start, end, delay=self.delay)

    def next_due(self, after: datetime) -> datetime:
        return next_due(self.schedule, after, delay=self.delay)

    def missed_runs(self, last_run: datetime | None, now: datetime) -> datetime | None:
        return missed_runs(self.schedule, last_run, now, delay=self.delay)
