"""Backup policies: schedules across DST, GFS retention properties, protection, validation."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vmvault.errors import UsageError
from vmvault.policy import (
    DEFAULT_POLICY,
    MAX_POINTS_PER_VM,
    REASONS,
    WEEKDAYS,
    ImmutableVaultError,
    Point,
    Policy,
    PolicyError,
    ProtectionState,
    ProtectionStateError,
    Retention,
    Schedule,
    Timetable,
    check_retention_change,
    due_for_purge,
    due_times,
    max_delay,
    missed_runs,
    next_due,
    parse_policy,
    prune_plan,
    purge,
    resume_protection,
    retention_shortened,
    select_kept,
    set_immutability,
    stop_protection,
    undelete,
    upcoming_purge_alert,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def daily(time: str, tz: str = "UTC") -> Schedule:
    return Schedule(kind="daily", time=time, timezone=tz)


def hourly(time: str, every: int, window: int, tz: str = "UTC") -> Schedule:
    return Schedule(kind="hourly", time=time, every_hours=every, window_hours=window, timezone=tz)


# --- schedules ------------------------------------------------------------------------------


def test_daily_berlin_spring_forward_runs_once_at_the_end_of_the_gap() -> None:
    # 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist and runs at 03:00 local.
    times = due_times(daily("02:30", "Europe/Berlin"), utc(2026, 3, 27), utc(2026, 3, 31))
    assert times == [
        utc(2026, 3, 27, 1, 30),  # 02:30 CET
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first valid instant after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_daily_berlin_fall_back_runs_once_at_the_first_occurrence() -> None:
    # 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice and runs the first time.
    times = due_times(daily("02:30", "Europe/Berlin"), utc(2026, 10, 23), utc(2026, 10, 27))
    assert times == [
        utc(2026, 10, 23, 0, 30),
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, not also 01:30 UTC (02:30 CET)
        utc(2026, 10, 26, 1, 30),
    ]


def test_daily_new_york_spring_forward_and_fall_back() -> None:
    spring = due_times(daily("02:30", "America/New_York"), utc(2026, 3, 7), utc(2026, 3, 10))
    assert spring == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]
    fall = due_times(daily("01:30", "America/New_York"), utc(2026, 10, 31), utc(2026, 11, 3))
    assert fall == [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
@pytest.mark.parametrize("time", ["00:00", "01:30", "02:00", "02:30", "23:30"])
def test_daily_runs_exactly_once_per_local_day_all_year(tz: str, time: str) -> None:
    times = due_times(daily(time, tz), utc(2025, 12, 31, 12), utc(2026, 12, 31, 12))
    local_days = [t.astimezone(ZoneInfo(tz)).date() for t in times]
    assert len(times) == 365 and len(set(local_days)) == 365
    assert times == sorted(set(times)) and all(t.tzinfo is UTC for t in times)


def test_due_times_is_half_open_and_needs_aware_instants() -> None:
    s = daily("22:30")
    assert due_times(s, utc(2026, 1, 1, 22, 30), utc(2026, 1, 2, 22, 30)) == [
        utc(2026, 1, 2, 22, 30)
    ]
    assert due_times(s, utc(2026, 1, 2), utc(2026, 1, 1)) == []
    with pytest.raises(PolicyError, match="start must be a timezone-aware"):
        due_times(s, datetime(2026, 1, 1), utc(2026, 1, 2))


def test_weekly_runs_on_its_days_only() -> None:
    s = Schedule(kind="weekly", time="21:00", days=("thu", "mon"), timezone="Europe/Berlin")
    assert s.days == ("mon", "thu")
    times = due_times(s, utc(2026, 1, 1), utc(2026, 1, 15))  # 2026-01-01 is a Thursday
    assert times == [
        utc(2026, 1, 1, 20),
        utc(2026, 1, 5, 20),
        utc(2026, 1, 8, 20),
        utc(2026, 1, 12, 20),
    ]


@pytest.mark.parametrize(
    ("every", "window", "hours"),
    [
        (4, 12, [8, 12, 16]),  # 20:00 is the window's end, not inside it
        (6, 12, [8, 14]),
        (8, 23, [8, 16, 24]),  # 24 = next day 00:00, still inside the window
        (12, 4, [8]),
        (12, 13, [8, 20]),
    ],
)
def test_hourly_starts_inside_the_window(every: int, window: int, hours: list[int]) -> None:
    times = due_times(hourly("08:00", every, window), utc(2026, 5, 4), utc(2026, 5, 4, 23, 59))
    first_day = [utc(2026, 5, 4) + timedelta(hours=h) for h in hours]
    assert times == [t for t in first_day if t <= utc(2026, 5, 4, 23, 59)]


def test_hourly_window_may_cross_midnight() -> None:
    # Azure's widest window: starts 19:30 and lasts 23 h, so it ends 18:30 the next day.
    s = hourly("19:30", 8, 23)
    times = due_times(s, utc(2026, 1, 1, 12), utc(2026, 1, 3, 12))
    assert times == [
        utc(2026, 1, 1, 19, 30),
        utc(2026, 1, 2, 3, 30),
        utc(2026, 1, 2, 11, 30),
        utc(2026, 1, 2, 19, 30),
        utc(2026, 1, 3, 3, 30),
        utc(2026, 1, 3, 11, 30),
    ]


def test_hourly_starts_are_wall_clock_across_dst() -> None:
    s = hourly("00:00", 4, 12, "Europe/Berlin")
    times = due_times(s, utc(2026, 3, 28, 12), utc(2026, 3, 29, 12))
    # 00:00 CET, 04:00 CEST and 08:00 CEST: the same local times as every other day.
    assert times == [utc(2026, 3, 28, 23), utc(2026, 3, 29, 2), utc(2026, 3, 29, 6)]


def test_a_vms_own_start_delays_every_slot_forwards() -> None:
    night = Timetable.of(daily("22:00", "Europe/Berlin"), "01:30")
    assert night.delay == timedelta(hours=3, minutes=30) and night.start == "01:30"
    # tonight's slot (22:00 CET = 21:00 UTC) starts at 01:30 CET the next morning
    [run] = night.runs(utc(2026, 1, 5), utc(2026, 1, 6))
    assert (run.slot, run.start) == (utc(2026, 1, 5, 21), utc(2026, 1, 6, 0, 30))
    assert run.deadline == run.start + timedelta(hours=24)
    assert night.due_times(utc(2026, 1, 6), utc(2026, 1, 7)) == [utc(2026, 1, 6, 0, 30)]
    assert night.missed_runs(utc(2026, 1, 5, 21), utc(2026, 1, 6, 0, 29)) is None
    assert night.missed_runs(utc(2026, 1, 5, 21), utc(2026, 1, 6, 0, 30)) == run.start
    assert night.next_due(utc(2026, 1, 5, 21)) == run.start
    # a weekly Monday slot delayed past midnight runs on Tuesday
    weekly = Timetable.of(Schedule(kind="weekly", time="22:00", days=("mon",)), "02:00")
    assert weekly.due_times(utc(2026, 1, 1), utc(2026, 1, 15)) == [
        utc(2026, 1, 6, 2),
        utc(2026, 1, 13, 2),
    ]
    # the delay is wall-clock: on the night clocks jump, 02:30 becomes 03:00 local
    dst = Timetable.of(daily("01:30", "Europe/Berlin"), "02:30")
    assert dst.due_times(utc(2026, 3, 28, 12), utc(2026, 3, 29, 12)) == [utc(2026, 3, 29, 1)]
    assert Timetable.of(daily("22:00")).delay == timedelta(0)


def test_hourly_starts_may_move_only_as_far_as_the_window_allows() -> None:
    s = hourly("08:00", 4, 12)
    assert max_delay(s) == timedelta(hours=4)  # 16:00 + 4 h is the window's end
    late = Timetable.of(s, "11:30")
    runs = late.runs(utc(2026, 5, 4), utc(2026, 5, 5))
    assert [r.start.hour for r in runs] == [11, 15, 19]
    assert {r.deadline for r in runs} == {utc(2026, 5, 4, 20)}  # the window still ends at 20:00
    with pytest.raises(PolicyError, match="outside the window"):
        Timetable.of(s, "12:00")
    with pytest.raises(PolicyError, match="outside the window"):
        Timetable.of(s, "07:59")  # a day later, not a minute earlier
    assert max_delay(hourly("19:30", 4, 23)) == timedelta(hours=3)
    assert max_delay(daily("22:00")) == timedelta(hours=24)


def test_next_due() -> None:
    s = daily("02:30", "Europe/Berlin")
    assert next_due(s, utc(2026, 3, 28, 2)) == utc(2026, 3, 29, 1)
    assert next_due(s, utc(2026, 3, 29, 1)) == utc(2026, 3, 30, 0, 30)  # strictly after
    weekly = Schedule(kind="weekly", time="23:00", days=("sun",))
    assert next_due(weekly, utc(2026, 1, 4, 23, 0, 1)) == utc(2026, 1, 11, 23)
    assert next_due(hourly("19:30", 12, 23), utc(2026, 1, 1, 19, 30)) == utc(2026, 1, 2, 7, 30)


def test_missed_runs_owes_one_catch_up_never_a_burst() -> None:
    s = daily("22:30")
    # Down from just after the 1 March run until 5 March 10:00: three starts missed, one owed.
    assert missed_runs(s, utc(2026, 3, 1, 22, 35), utc(2026, 3, 5, 10)) == utc(2026, 3, 4, 22, 30)
    # Down for a year: still one.
    assert missed_runs(s, utc(2025, 3, 1), utc(2026, 3, 5, 10)) == utc(2026, 3, 4, 22, 30)
    assert missed_runs(s, utc(2026, 3, 4, 22, 40), utc(2026, 3, 5, 10)) is None  # up to date
    assert missed_runs(s, None, utc(2026, 3, 5, 10)) is None  # never run: wait for next_due
    assert missed_runs(s, utc(2026, 3, 6), utc(2026, 3, 5)) is None
    assert missed_runs(hourly("08:00", 4, 12), utc(2026, 3, 1, 8, 5), utc(2026, 3, 1, 19)) == utc(
        2026, 3, 1, 16
    )


schedules = st.one_of(
    st.builds(
        Schedule,
        kind=st.just("daily"),
        time=st.sampled_from(["00:00", "01:30", "02:30", "12:00", "23:30"]),
        timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "America/Santiago"]),
    ),
    st.builds(
        Schedule,
        kind=st.just("weekly"),
        time=st.sampled_from(["00:00", "02:30", "23:30"]),
        days=st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True).map(tuple),
        timezone=st.sampled_from(["UTC", "Europe/Berlin", "Australia/Lord_Howe"]),
    ),
    st.builds(
        Schedule,
        kind=st.just("hourly"),
        time=st.sampled_from(["00:00", "01:30", "08:00", "19:30"]),
        every_hours=st.sampled_from([4, 6, 8, 12]),
        window_hours=st.integers(4, 23),
        timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]),
    ),
)
instants = st.integers(0, 2 * 366 * 24 * 60).map(lambda m: utc(2025, 1, 1) + timedelta(minutes=m))


@settings(max_examples=60, deadline=None)
@given(s=schedules, a=instants, gap1=st.integers(0, 9 * 24 * 60), gap2=st.integers(0, 9 * 24 * 60))
def test_schedule_functions_agree(s: Schedule, a: datetime, gap1: int, gap2: int) -> None:
    b, c = a + timedelta(minutes=gap1), a + timedelta(minutes=gap1 + gap2)
    whole = due_times(s, a, c)
    assert whole == due_times(s, a, b) + due_times(s, b, c)  # half-open pieces add up
    assert whole == sorted(set(whole))
    assert next_due(s, a) == due_times(s, a, a + timedelta(days=8))[0]
    assert missed_runs(s, a, c) == (whole[-1] if whole else None)


@settings(max_examples=60, deadline=None)
@given(s=schedules, a=instants, gap=st.integers(0, 9 * 24 * 60), data=st.data())
def test_delayed_schedules_agree(s: Schedule, a: datetime, gap: int, data: st.DataObject) -> None:
    minutes = data.draw(st.integers(0, int(max_delay(s).total_seconds()) // 60 - 1))
    t = Timetable(s, timedelta(minutes=minutes))
    b = a + timedelta(minutes=gap)
    starts = t.due_times(a, b)
    assert starts == sorted(set(starts))
    assert t.next_due(a) == t.due_times(a, a + timedelta(days=9))[0]
    # every slot of the undelayed schedule has exactly one delayed run
    slots = due_times(s, a, b)
    assert sorted(r.slot for r in t.runs(a, b)) == slots
    assert all(r.start >= r.slot and r.start < r.deadline for r in t.runs(a, b))


# --- model validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (
            {"kind": "daily", "time": "25:00"},
            "policies.p.schedule.time: '25:00' is not a time of day as HH:MM",
        ),
        (
            {"kind": "daily", "time": "02:00", "timezone": "Mars/Olympus"},
            "policies.p.schedule.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            {"kind": "hourly", "time": "08:00", "every_hours": 5, "window_hours": 12},
            "policies.p.schedule.every_hours: every_hours must be one of 4, 6, 8, 12, not 5",
        ),
        (
            {"kind": "hourly", "time": "08:00", "every_hours": 4, "window_hours": 24},
            "policies.p.schedule.window_hours: window_hours must be 4 to 23, not 24",
        ),
        (
            {"kind": "hourly", "time": "20:00", "every_hours": 4, "window_hours": 12},
            "policies.p.schedule.time: an hourly window starts between 00:00 and 19:30",
        ),
        ({"kind": "hourly", "time": "08:00"}, "policies.p.schedule.every_hours: an hourly"),
        (
            {"kind": "weekly", "time": "02:00"},
            "policies.p.schedule.days: a weekly schedule needs days",
        ),
        (
            {"kind": "weekly", "time": "02:00", "days": ["mon", "mon"]},
            "policies.p.schedule.days: days repeat: mon",
        ),
        (
            {"kind": "weekly", "time": "02:00", "days": ["monday"]},
            "policies.p.schedule.days[0]: Input should be 'mon'",
        ),
        (
            {"kind": "daily", "time": "02:00", "days": ["mon"]},
            "policies.p.schedule.days: days apply only to weekly schedules",
        ),
        ({"kind": "monthly", "time": "02:00"}, "policies.p.schedule.kind: Input should be"),
        ({"kind": "daily"}, "policies.p.schedule.time: Field required"),
    ],
)
def test_bad_schedules_give_one_line_naming_the_field(
    schedule: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy("p", {"schedule": schedule})
    assert exc.value.message.startswith(message), exc.value.message
    assert "\n" not in exc.value.message
    assert isinstance(exc.value, UsageError) and exc.value.code == "bad_policy"


@pytest.mark.parametrize(
    ("kind", "retention", "message"),
    [
        ("daily", {"instant_restore_days": 6}, "retention: instant_restore_days must be 1 to 5"),
        ("daily", {"instant_restore_days": 0}, "retention.instant_restore_days: Input should"),
        ("daily", {"daily_days": 0}, "retention: a daily schedule needs daily_days"),
        ("weekly", {"daily_days": 7}, "retention: daily_days does not apply to a weekly"),
        ("weekly", {"weekly_weeks": 0}, "retention: a weekly schedule needs weekly_weeks"),
        ("daily", {"monthly_day": 31}, 'retention.monthly_day: monthly_day must be 1 to 28 or "l'),
        ("daily", {"yearly_month": 13}, "retention.yearly_month: Input should be less than"),
        ("daily", {"weekly_day": "sunday"}, "retention.weekly_day: Input should be 'mon'"),
        ("daily", {"colour": "red"}, "retention.colour: Extra inputs are not permitted"),
    ],
)
def test_bad_retentions_name_the_field(kind: str, retention: dict[str, Any], message: str) -> None:
    schedule: dict[str, Any] = {"kind": kind, "time": "02:00"}
    if kind == "weekly":
        schedule["days"] = ["sun"]
    with pytest.raises(PolicyError) as exc:
        parse_policy("p", {"schedule": schedule, "retention": retention})
    assert exc.value.message.startswith(f"policies.p.{message}"), exc.value.message
    assert "\n" not in exc.value.message


def test_model_validate_reports_the_field_location() -> None:
    with pytest.raises(ValidationError) as exc:
        Policy.model_validate({"name": "p", "schedule": {"kind": "daily", "time": "25:00"}})
    assert exc.value.error_count() == 1
    assert exc.value.errors()[0]["loc"] == ("schedule", "time")
    with pytest.raises(PolicyError, match=r"\(and 1 more\)"):
        parse_policy("p", {"schedule": {"kind": "daily", "time": "25:00", "timezone": "X/Y"}})


def test_defaults_follow_azure_by_schedule_kind() -> None:
    assert DEFAULT_POLICY.schedule.kind == "daily" and DEFAULT_POLICY.schedule.time == "22:30"
    assert (DEFAULT_POLICY.retention.instant_restore_days, DEFAULT_POLICY.retention.daily_days) == (
        2,
        30,
    )
    weekly = parse_policy("w", {"schedule": {"kind": "weekly", "time": "01:00", "days": ["sat"]}})
    assert weekly.retention.instant_restore_days == 5 and weekly.retention.daily_days is None
    assert weekly.retention.weekly_weeks == 12
    given_ir = parse_policy(
        "w",
        {
            "schedule": {"kind": "weekly", "time": "01:00", "days": ["sat"]},
            "retention": {"instant_restore_days": 3},
        },
    )
    assert given_ir.retention.instant_restore_days == 3
    h = parse_policy(
        "h", {"schedule": {"kind": "hourly", "time": "08:00", "every_hours": 4, "window_hours": 12}}
    )
    r = h.retention
    assert (r.instant_restore_days, r.daily_days, r.weekly_weeks, r.monthly_months) == (
        7,
        180,
        12,
        60,
    )
    assert r.yearly_years == 10
    # A Retention object passed in gets the same kind defaults for the fields it left out.
    p = Policy(
        name="w",
        schedule=Schedule(kind="weekly", time="01:00", days=("sun",)),
        retention=Retention(weekly_weeks=4),
    )
    assert (p.retention.instant_restore_days, p.retention.daily_days) == (5, None)
    assert Retention(daily_days=0, weekly_weeks=0).daily_days is None  # 0 means "not kept"


def test_policies_load_from_toml_tables() -> None:
    doc = tomllib.loads(
        """
        [policies.nightly]
        schedule = { kind = "daily", time = 02:30:00, timezone = "Europe/Berlin" }
        retention = { daily_days = 14, monthly_months = 12, monthly_day = "last" }

        [policies.busy.schedule]
        kind = "hourly"
        time = "19:30"
        every_hours = 4
        window_hours = 23
        """
    )
    policies = {name: parse_policy(name, table) for name, table in doc["policies"].items()}
    nightly = policies["nightly"]
    assert nightly.schedule.time == "02:30" and nightly.schedule.tzinfo == ZoneInfo("Europe/Berlin")
    assert nightly.retention.monthly_day == "last" and nightly.retention.daily_days == 14
    assert policies["busy"].schedule.window_hours == 23
    with pytest.raises(PolicyError, match="has seconds"):
        parse_policy("x", {"schedule": {"kind": "daily", "time": tomllib.loads("t=02:30:15")["t"]}})


# --- retention -------------------------------------------------------------------------------

NOW = utc(2026, 6, 17, 12)  # a Wednesday
TZS = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",  # half-hour DST
    "America/Santiago",  # DST changes at midnight: local dates repeat or vanish
]


def points_at(*instants: datetime, vm: str = "") -> list[Point]:
    return [Point(f"{vm}p{i:05d}", t, vm) for i, t in enumerate(instants)]


def daily_points(days: int, hour: int = 22, end: datetime = NOW, vm: str = "") -> list[Point]:
    first = (end - timedelta(days=days)).replace(hour=hour, minute=0, second=0, microsecond=0)
    return points_at(*(first + timedelta(days=i) for i in range(1, days + 1)), vm=vm)


def test_daily_keeps_the_latest_point_of_each_of_the_last_days() -> None:
    pts = points_at(
        utc(2026, 6, 17, 1), utc(2026, 6, 17, 9), utc(2026, 6, 16, 8), utc(2026, 6, 16, 20),
        utc(2026, 6, 10, 20), utc(2026, 6, 9, 20),
    )  # fmt: skip
    keep = select_kept(pts, Retention(instant_restore_days=1, daily_days=8), NOW)
    assert keep == {
        "p00000": {"instant-restore"},  # 11 h old
        "p00001": {"latest", "instant-restore", "daily"},
        "p00003": {"instant-restore", "daily"},  # 16 h old
        "p00004": {"daily"},
    }  # p00002: same day as p00003 and older than a day; p00005: 9 days back, window is 8


def test_days_are_calendar_days_in_the_policy_time_zone() -> None:
    # 22:30 and 23:30 UTC on the 15th are the 16th in Berlin (CEST, +2).
    pts = points_at(utc(2026, 6, 15, 21), utc(2026, 6, 15, 22, 30), utc(2026, 6, 15, 23, 30))
    r = Retention(instant_restore_days=1, daily_days=5)
    assert set(select_kept(pts, r, NOW, "UTC")) == {"p00002"}
    assert set(select_kept(pts, r, NOW, "Europe/Berlin")) == {"p00000", "p00002"}


def test_weekly_anchor_falls_back_to_the_latest_point_of_the_week() -> None:
    # Backups on Wednesdays only, weekly_day sun: each week's Wednesday point is its weekly one.
    weds = [utc(2026, 6, 17, 1) - timedelta(weeks=w) for w in range(6)]
    r = Retention(instant_restore_days=1, daily_days=None, weekly_weeks=4)
    keep = select_kept(points_at(*weds), r, NOW)
    assert {k for k, why in keep.items() if "weekly" in why} == {f"p0000{i}" for i in range(4)}
    # weekly_day wed: the latest Wednesday point wins over the later Friday one; the current
    # week (from Monday 15 June) has no point on or after Wednesday yet, so its latest counts.
    pts = points_at(utc(2026, 6, 10, 5), utc(2026, 6, 10, 9), utc(2026, 6, 12, 5), utc(2026, 6, 16))
    wed = Retention(instant_restore_days=1, daily_days=None, weekly_weeks=2, weekly_day="wed")
    assert select_kept(pts, wed, NOW) == {"p00001": {"weekly"}, "p00003": {"latest", "weekly"}}
    sun = wed.model_copy(update={"weekly_day": "sun"})
    assert select_kept(pts, sun, NOW) == {"p00002": {"weekly"}, "p00003": {"latest", "weekly"}}


def test_monthly_point_is_the_first_day_with_a_backup_on_or_after_the_anchor() -> None:
    pts = [p for p in daily_points(120) if p.created.date() != date(2026, 5, 1)]  # 1 May failed
    r = Retention(instant_restore_days=1, daily_days=None, monthly_months=3)
    monthly = sorted(
        k.created.date() for k in pts if "monthly" in select_kept(pts, r, NOW).get(k.id, ())
    )
    assert monthly == [date(2026, 4, 1), date(2026, 5, 2), date(2026, 6, 1)]
    last = Retention(instant_restore_days=1, daily_days=None, monthly_months=3, monthly_day="last")
    kept = select_kept(pts, last, NOW)
    monthly = sorted(k.created.date() for k in pts if "monthly" in kept.get(k.id, ()))
    assert monthly == [date(2026, 4, 30), date(2026, 5, 31), date(2026, 6, 16)]  # June: so far


def test_yearly_uses_yearly_month_and_monthly_day() -> None:
    pts = daily_points(3 * 366)
    r = Retention(
        instant_restore_days=1, daily_days=None, yearly_years=3, yearly_month=3, monthly_day=15
    )
    kept = select_kept(pts, r, NOW)
    yearly = sorted(k.created.date() for k in pts if "yearly" in kept.get(k.id, ()))
    assert yearly == [date(2024, 3, 15), date(2025, 3, 15), date(2026, 3, 15)]


def test_each_vm_is_judged_separately() -> None:
    a = daily_points(3, vm="a")
    b = points_at(utc(2025, 1, 1), vm="b")  # ancient, but b's only point
    keep = select_kept(a + b, Retention(instant_restore_days=1, daily_days=1), NOW)
    assert keep["bp00000"] == {"latest"} and "ap00002" in keep
    with pytest.raises(PolicyError, match="appears twice"):
        select_kept(a + a, Retention(), NOW)
    with pytest.raises(PolicyError, match="timezone-aware"):
        select_kept([Point("x", datetime(2026, 1, 1))], Retention(), NOW)
    with pytest.raises(PolicyError, match="unknown time zone"):
        select_kept(a, Retention(), NOW, "Nowhere/Land")


def test_points_from_the_future_are_never_pruned() -> None:
    pts = points_at(utc(2026, 1, 1), NOW + timedelta(hours=3))
    assert select_kept(pts, Retention(instant_restore_days=1, daily_days=1), NOW) == {
        "p00001": {"latest", "future"}
    }


def test_at_most_9999_points_per_vm_unless_the_vault_is_immutable() -> None:
    pts = daily_points(MAX_POINTS_PER_VM + 100)
    r = Retention(instant_restore_days=1, daily_days=9999, yearly_years=99)
    plan = prune_plan(pts, r, NOW)
    assert len(plan.keep) == MAX_POINTS_PER_VM
    assert plan.prune == [p.id for p in pts[: len(pts) - MAX_POINTS_PER_VM]]  # the oldest
    assert pts[-1].id in plan.keep
    assert len(prune_plan(pts, r, NOW, immutable="locked").keep) > MAX_POINTS_PER_VM


def test_stop_protection_retain_data_prunes_nothing() -> None:
    pts = daily_points(100)
    plan = prune_plan(
        pts, Retention(instant_restore_days=1, daily_days=7), NOW, stopped_retain=True
    )
    assert plan.prune == [] and set(plan.keep) == {p.id for p in pts}
    assert all("stopped-retain" in why for why in plan.keep.values())
    with pytest.raises(PolicyError, match="immutable must be one of"):
        prune_plan(pts, Retention(), NOW, immutable="maybe")  # type: ignore[arg-type]


retentions = st.builds(
    Retention,
    instant_restore_days=st.integers(1, 30),
    daily_days=st.integers(0, 60),
    weekly_weeks=st.integers(0, 30),
    monthly_months=st.integers(0, 30),
    yearly_years=st.integers(0, 3),
    weekly_day=st.sampled_from(WEEKDAYS),
    monthly_day=st.one_of(st.integers(1, 28), st.just("last")),
    yearly_month=st.integers(1, 12),
)
TWO_YEARS = 2 * 366 * 86400
# Ages in seconds: spread over two years, plus clusters of several points a day.
ages = st.lists(
    st.one_of(st.integers(0, TWO_YEARS), st.integers(0, 20 * 86400)),
    min_size=1,
    max_size=120,
    unique=True,
)
nows = st.integers(0, 400 * 86400).map(lambda s: utc(2025, 1, 1) + timedelta(seconds=s))


def _period_start(kind: str, day: date) -> date:
    if kind == "daily":
        return day
    if kind == "weekly":
        return day - timedelta(days=day.weekday())
    if kind == "monthly":
        return day.replace(day=1)
    return date(day.year, 1, 1)


def _oldest_period(kind: str, today: date, n: int) -> date:
    if kind == "daily":
        return today - timedelta(days=n - 1)
    if kind == "weekly":
        return _period_start("weekly", today) - timedelta(weeks=n - 1)
    if kind == "monthly":
        index = today.year * 12 + today.month - 1 - (n - 1)
        return date(index // 12, index % 12 + 1, 1)
    return date(today.year - (n - 1), 1, 1)


def _anchor(kind: str, start: date, r: Retention) -> date:
    if kind == "daily":
        return start
    if kind == "weekly":
        return start + timedelta(days=WEEKDAYS.index(r.weekly_day))
    month = start.month if kind == "monthly" else r.yearly_month
    return r.anchor_in_month(start.year, month)


def _expected(kind: str, pts: list[Point], r: Retention, now: datetime, tz: ZoneInfo) -> set[str]:
    """The spec restated: per period in the window, the latest point of the first day on or
    after the anchor that has one, else the period's latest point."""
    n = {
        "daily": r.daily_days,
        "weekly": r.weekly_weeks,
        "monthly": r.monthly_months,
        "yearly": r.yearly_years,
    }[kind]
    if not n:
        return set()
    today = now.astimezone(tz).date()
    oldest = _oldest_period(kind, today, n)
    periods: dict[date, list[tuple[date, datetime, str]]] = {}
    for p in pts:
        day = p.created.astimezone(tz).date()
        if p.created <= now and _period_start(kind, day) >= oldest:
            periods.setdefault(_period_start(kind, day), []).append((day, p.created, p.id))
    chosen = set()
    for start, members in periods.items():
        anchor = _anchor(kind, start, r)
        after = [m for m in members if m[0] >= anchor]
        if after:
            first_day = min(m[0] for m in after)
            chosen.add(max(m for m in after if m[0] == first_day)[2])
        else:
            chosen.add(max(members, key=lambda m: (m[1], m[2]))[2])
    return chosen


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ages=ages, r=retentions, now=nows, tz_name=st.sampled_from(TZS))
def test_retention_properties(ages: list[int], r: Retention, now: datetime, tz_name: str) -> None:
    tz = ZoneInfo(tz_name)
    pts = [Point(f"p{i}", now - timedelta(seconds=a)) for i, a in enumerate(ages)]
    plan = prune_plan(pts, r, now, tz_name)
    keep, prune = plan
    ids = {p.id for p in pts}
    # keep and prune partition the points
    assert set(keep) | set(prune) == ids and not set(keep) & set(prune)
    assert len(prune) == len(set(prune))
    # the newest point is always kept; every kept point has a known reason
    newest = max(pts, key=lambda p: (p.created, p.id))
    assert "latest" in keep[newest.id]
    assert all(why and why <= set(REASONS) for why in keep.values())
    # each GFS kind keeps exactly the expected point of each period in its window
    for kind in ("daily", "weekly", "monthly", "yearly"):
        got = {pid for pid, why in keep.items() if kind in why}
        assert got == _expected(kind, pts, r, now, tz), kind
    # instant-restore: exactly the points younger than its days
    young = {p.id for p in pts if now - p.created < timedelta(days=r.instant_restore_days)}
    assert {pid for pid, why in keep.items() if "instant-restore" in why} == young
    # nothing older than every window is kept, but for the newest point
    today = now.astimezone(tz).date()
    windows = [
        _oldest_period(kind, today, n)
        for kind, n in [
            ("daily", r.daily_days),
            ("weekly", r.weekly_weeks),
            ("monthly", r.monthly_months),
            ("yearly", r.yearly_years),
        ]
        if n
    ]
    for p in pts:
        if p.id in keep and p.id != newest.id and p.id not in young:
            assert windows and p.created.astimezone(tz).date() >= min(windows)
    # idempotent: applying the plan and planning again prunes nothing more
    survivors = [p for p in pts if p.id in keep]
    again = prune_plan(survivors, r, now, tz_name)
    assert again.prune == [] and set(again.keep) == set(keep)
    # "stop protection, retain data" prunes nothing
    assert prune_plan(pts, r, now, tz_name, stopped_retain=True).prune == []


def test_retention_shortened() -> None:
    old = Retention(daily_days=30, weekly_weeks=12, monthly_months=12)
    assert retention_shortened(old, old) == []
    assert (
        retention_shortened(old, Retention(daily_days=60, weekly_weeks=52, monthly_months=12)) == []
    )
    new = Retention(instant_restore_days=1, daily_days=7, weekly_weeks=None, monthly_months=12)
    assert retention_shortened(old, new) == ["instant_restore_days", "daily_days", "weekly_weeks"]
    # a moved anchor can drop points the old policy kept; an unused one cannot
    assert retention_shortened(old, old.model_copy(update={"monthly_day": "last"})) == [
        "monthly_day"
    ]
    assert retention_shortened(old, old.model_copy(update={"yearly_month": 6})) == []


# --- protection ------------------------------------------------------------------------------

T0 = utc(2026, 2, 1, 9)


def test_soft_delete_then_undelete_returns_to_stopped_retain() -> None:
    deleted = stop_protection(ProtectionState(), delete_data=True, now=T0)
    assert deleted.status == "stopped-deleted" and deleted.purge_at == T0 + timedelta(days=14)
    # deleting again does not push the purge date back
    assert stop_protection(deleted, delete_data=True, now=T0 + timedelta(days=5)) == deleted
    back = undelete(deleted, T0 + timedelta(days=13, hours=23))
    assert back.status == "stopped-retain" and back.purge_at is None
    assert resume_protection(back, T0 + timedelta(days=14)).status == "protected"


def test_undelete_refused_after_purge_at_and_purge() -> None:
    deleted = stop_protection(ProtectionState(), delete_data=True, now=T0, soft_delete_days=30)
    assert deleted.purge_at == T0 + timedelta(days=30)
    assert not due_for_purge(deleted, T0 + timedelta(days=29))
    assert due_for_purge(deleted, T0 + timedelta(days=30))
    with pytest.raises(ProtectionStateError, match="soft-delete period ended") as exc:
        undelete(deleted, T0 + timedelta(days=30))
    assert exc.value.code == "protection_state"
    purged = purge(deleted)
    assert purged.status == "purged" and purged.changed_at == deleted.purge_at
    assert not due_for_purge(purged, T0 + timedelta(days=40))
    with pytest.raises(ProtectionStateError):
        undelete(purged, T0)
    with pytest.raises(ProtectionStateError):
        purge(ProtectionState("stopped-retain"))
    with pytest.raises(ProtectionStateError):
        stop_protection(purged, delete_data=False, now=T0)
    with pytest.raises(ProtectionStateError, match="undelete it"):
        stop_protection(deleted, delete_data=False, now=T0)


@pytest.mark.parametrize("days", [0, 13, 181, 365])
def test_soft_delete_days_outside_14_to_180_refused(days: int) -> None:
    with pytest.raises(PolicyError, match="soft delete keeps data 14 to 180 days"):
        stop_protection(ProtectionState(), delete_data=True, now=T0, soft_delete_days=days)


def test_stop_retain_is_allowed_and_repeatable() -> None:
    kept = stop_protection(ProtectionState(), delete_data=False, now=T0, immutable="locked")
    assert kept == ProtectionState("stopped-retain", changed_at=T0)
    assert stop_protection(kept, delete_data=False, now=T0 + timedelta(days=1)) == kept
    later = stop_protection(kept, delete_data=True, now=T0 + timedelta(days=1))
    assert later.purge_at == T0 + timedelta(days=15)


@pytest.mark.parametrize("immutable", ["on", "locked"])
def test_immutable_vault_refuses_delete_and_shorter_retention(immutable: Any) -> None:
    with pytest.raises(ImmutableVaultError) as exc:
        stop_protection(ProtectionState(), delete_data=True, now=T0, immutable=immutable)
    assert exc.value.code == "immutable_vault" and isinstance(exc.value, PolicyError)
    old, shorter = Retention(daily_days=30), Retention(daily_days=7)
    with pytest.raises(ImmutableVaultError, match=r"cannot be shortened \(daily_days\)"):
        check_retention_change(old, shorter, immutable)
    assert check_retention_change(shorter, old, immutable) == []  # longer is fine
    assert check_retention_change(old, shorter, "off") == ["daily_days"]


def test_locked_immutability_is_forever() -> None:
    assert set_immutability("off", "on") == "on"
    assert set_immutability("on", "off") == "off"
    assert set_immutability("on", "locked") == "locked"
    assert set_immutability("locked", "locked") == "locked"
    for new in ("off", "on"):
        with pytest.raises(ImmutableVaultError, match="locked"):
            set_immutability("locked", new)
    with pytest.raises(PolicyError, match="must be one of"):
        set_immutability("off", "sealed")  # type: ignore[arg-type]


def test_upcoming_purge_alert_two_days_before() -> None:
    deleted = stop_protection(ProtectionState(), delete_data=True, now=T0)
    purge_at = T0 + timedelta(days=14)
    assert not upcoming_purge_alert(deleted, purge_at - timedelta(days=2, seconds=1))
    assert upcoming_purge_alert(deleted, purge_at - timedelta(days=2))
    assert upcoming_purge_alert(deleted, purge_at - timedelta(seconds=1))
    assert not upcoming_purge_alert(deleted, purge_at)  # purge due now: no longer "upcoming"
    assert not upcoming_purge_alert(ProtectionState(), purge_at)


def test_protection_state_invariants() -> None:
    with pytest.raises(PolicyError, match="purge_at is set exactly"):
        ProtectionState("stopped-deleted")
    with pytest.raises(PolicyError, match="protection status must be one of"):
        ProtectionState("paused")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="timezone-aware"):
        stop_protection(ProtectionState(), delete_data=False, now=datetime(2026, 1, 1))


def test_verify_sample_new_once_for_recent_points_all_again_after_every_days() -> None:
    from vmvault.policy.model import VerifySchedule

    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    day = timedelta(days=1)
    new = VerifySchedule(every_days=7)  # sample "new" is the default
    assert new.due(now - 6 * day, None, now)  # recent, never verified
    assert not new.due(now - 8 * day, None, now)  # older than the sample reaches
    assert not new.due(now - 2 * day, now - 100 * day, now)  # verified once: done
    every = VerifySchedule(every_days=7, sample="all")
    assert every.due(now - 300 * day, None, now)
    assert every.due(now - 300 * day, now - 7 * day, now)
    assert not every.due(now - 300 * day, now - 6 * day, now)
    policy = parse_policy("p", {"schedule": {"kind": "daily", "time": "01:00"}})
    assert policy.verify is None
    with pytest.raises(PolicyError, match=r"policies\.p\.verify\.sample"):
        parse_policy(
            "p", {"schedule": {"kind": "daily", "time": "01:00"}, "verify": {"sample": "some"}}
        )
    with pytest.raises(PolicyError, match=r"policies\.p\.verify\.every_days"):
        parse_policy(
            "p", {"schedule": {"kind": "daily", "time": "01:00"}, "verify": {"every_days": 0}}
        )
