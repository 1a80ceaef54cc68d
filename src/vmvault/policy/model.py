"""Backup policies: when a VM is backed up (``Schedule``), how long points live (``Retention``).

The inventory holds them as ``[policies.NAME]`` tables; ``Policy.model_validate`` takes such a
table (plus its ``name``) and ``parse_policy`` turns a validation failure into one line that names
the field. Example:

    [policies.nightly]
    schedule = { kind = "daily", time = "02:30", timezone = "Europe/Berlin" }
    retention = { daily_days = 30, weekly_weeks = 12, monthly_months = 12 }

    verify = { every_days = 7, sample = "new" }   # optional: scheduled verifies

    [policies.busy-db.schedule]
    kind = "hourly"
    time = "08:00"          # the window's start
    every_hours = 4
    window_hours = 12       # starts at 08:00, 12:00 and 16:00

Defaults follow Azure Backup so its users find what they expect (see AZURE-FACTS.md, Policies):
a retention left out is filled in by schedule kind:

- daily:  2 instant-restore days, 30 daily points;
- weekly: 5 instant-restore days, 12 weekly points (Azure keeps weekly points, not daily ones);
- hourly (Azure's "enhanced" policy): 7 instant-restore days (1..30 allowed), 180 daily,
  12 weekly, 60 monthly and 10 yearly points.

Fields given explicitly always win. ``time`` has no default on purpose: the seed's "Backup
schedule" advice is to stagger VMs so they do not all start at once, so each policy states its
own start time.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from typing import Any, Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vmvault.policy.errors import PolicyError

ScheduleKind = Literal["daily", "weekly", "hourly"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Immutability = Literal["off", "on", "locked"]

WEEKDAYS: Final[tuple[Weekday, ...]] = get_args(Weekday)
HOURLY_INTERVALS: Final = (4, 6, 8, 12)
WINDOW_HOURS: Final = (4, 23)
LATEST_WINDOW_START: Final = "19:30"
IMMUTABILITY_STATES: Final[tuple[Immutability, ...]] = get_args(Immutability)
# Azure's limit per protected instance; retention.prune_plan enforces it.
MAX_POINTS_PER_VM: Final = 9999
# Azure's upper bounds for the retention counts.
MAX_DAILY_DAYS: Final = 9999
MAX_WEEKLY_WEEKS: Final = 5163
MAX_MONTHLY_MONTHS: Final = 1188
MAX_YEARLY_YEARS: Final = 99
# Instant-restore snapshot days: standard policies 1..5, enhanced (hourly) 1..30.
STANDARD_INSTANT_RESTORE_MAX: Final = 5
ENHANCED_INSTANT_RESTORE_MAX: Final = 30

_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

# Retention defaults per schedule kind, applied only to fields the policy leaves out.
_KIND_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "daily": {"instant_restore_days": 2, "daily_days": 30},
    "weekly": {"instant_restore_days": 5, "daily_days": None, "weekly_weeks": 12},
    "hourly": {
        "instant_restore_days": 7,
        "daily_days": 180,
        "weekly_weeks": 12,
        "monthly_months": 60,
        "yearly_years": 10,
    },
}


class _Strict(BaseModel):
    # Defined here rather than imported from inventory: the inventory will import policies.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hhmm(value: Any) -> Any:
    """TOML has a local-time type (``time = 02:30:00``); accept it as well as ``"02:30"``."""
    if isinstance(value, dt.time) and value.tzinfo is None:
        if value.second or value.microsecond:
            raise ValueError(f"{value.isoformat()} has seconds; give the time as HH:MM")
        return value.strftime("%H:%M")
    return value


def as_hhmm(value: Any) -> str:
    """A time of day as ``"HH:MM"`` (a string or TOML's local time); ``ValueError`` if not."""
    value = _hhmm(value)
    if not isinstance(value, str) or not _TIME.match(value):
        raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return value


class Schedule(_Strict):
    """When backups start, as local wall-clock times in ``timezone``.

    - ``daily``: every day at ``time``;
    - ``weekly``: at ``time`` on each of ``days``;
    - ``hourly``: each day, a window opens at ``time`` and lasts ``window_hours``; backups start
      at ``time``, ``time + every_hours``, ... while still inside the window. A window may run
      past midnight (Azure allows a 19:30 start with 23 hours); it never overlaps the next
      day's window since it lasts at most 23 hours.

    Field order matters: the validators of later fields read ``kind`` from earlier ones.
    """

    kind: ScheduleKind
    time: str
    days: tuple[Weekday, ...] | None = Field(default=None, validate_default=True)
    every_hours: int | None = Field(default=None, validate_default=True)
    window_hours: int | None = Field(default=None, validate_default=True)
    timezone: str = "UTC"

    @field_validator("time", mode="before")
    @classmethod
    def _time_type(cls, value: Any) -> Any:
        return _hhmm(value)

    @field_validator("time")
    @classmethod
    def _time(cls, value: str, info: ValidationInfo) -> str:
        if not _TIME.match(value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
        if info.data.get("kind") == "hourly" and value > LATEST_WINDOW_START:
            raise ValueError(
                f"an hourly window starts between 00:00 and {LATEST_WINDOW_START}, not {value}"
            )
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: tuple[Weekday, ...] | None, info: ValidationInfo) -> Any:
        kind = info.data.get("kind")
        if kind == "weekly":
            if not value:
                raise ValueError(f"a weekly schedule needs days, a list of {', '.join(WEEKDAYS)}")
            repeated = sorted({d for d in value if value.count(d) > 1}, key=WEEKDAYS.index)
            if repeated:
                raise ValueError(f"days repeat: {', '.join(repeated)}")
            return tuple(sorted(value, key=WEEKDAYS.index))
        if value is not None and kind is not None:
            raise ValueError(f"days apply only to weekly schedules, not {kind}")
        return value

    @field_validator("every_hours")
    @classmethod
    def _every_hours(cls, value: int | None, info: ValidationInfo) -> int | None:
        allowed = ", ".join(map(str, HOURLY_INTERVALS))
        kind = info.data.get("kind")
        if kind == "hourly":
            if value is None:
                raise ValueError(f"an hourly schedule needs every_hours ({allowed})")
            if value not in HOURLY_INTERVALS:
                raise ValueError(f"every_hours must be one of {allowed}, not {value}")
        elif value is not None and kind is not None:
            raise ValueError(f"every_hours applies only to hourly schedules, not {kind}")
        return value

    @field_validator("window_hours")
    @classmethod
    def _window_hours(cls, value: int | None, info: ValidationInfo) -> int | None:
        low, high = WINDOW_HOURS
        kind = info.data.get("kind")
        if kind == "hourly":
            if value is None:
                raise ValueError(f"an hourly schedule needs window_hours ({low} to {high})")
            if not low <= value <= high:
                raise ValueError(f"window_hours must be {low} to {high}, not {value}")
        elif value is not None and kind is not None:
            raise ValueError(f"window_hours applies only to hourly schedules, not {kind}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        # OSError: a folder of the zone database ("America") or a name too long for a path.
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as 'Europe/Berlin')"
            ) from None
        return value

    @property
    def start_time(self) -> dt.time:
        """``time`` as a ``datetime.time`` (the daily/weekly start, the hourly window's start)."""
        hours, minutes = self.time.split(":")
        return dt.time(int(hours), int(minutes))

    @property
    def tzinfo(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances per key


class Retention(_Strict):
    """How many recovery points to keep, grandfather-father-son style.

    ``daily_days`` / ``weekly_weeks`` / ``monthly_months`` / ``yearly_years`` count calendar
    periods in the policy's time zone, the current one included; ``None`` or 0 keeps none of
    that kind. The anchors pick which point represents a period (see
    ``vmvault.policy.retention.select_kept``):

    - ``weekly_day`` (default "sun"): the week's point is taken on that day or the first day
      after it that has a backup (weeks run Monday to Sunday, ISO 8601);
    - ``monthly_day`` (1..28 or "last", default 1): likewise within the month, so by default
      the first day of the month with a backup provides the monthly point, which is fixed as
      soon as it exists; days 29-31 are refused as not every month has them, use "last";
    - ``yearly_month`` (default 1) with ``monthly_day``: the year's anchor date.

    The defaults here are a standard daily policy's; ``Policy`` fills in other defaults for
    weekly and hourly schedules. The instant-restore bound here is the enhanced policy's 30;
    ``Policy`` holds daily and weekly schedules to Azure's 5.
    """

    instant_restore_days: int = Field(default=2, ge=1, le=ENHANCED_INSTANT_RESTORE_MAX)
    daily_days: int | None = Field(default=30, ge=0, le=MAX_DAILY_DAYS)
    weekly_weeks: int | None = Field(default=None, ge=0, le=MAX_WEEKLY_WEEKS)
    monthly_months: int | None = Field(default=None, ge=0, le=MAX_MONTHLY_MONTHS)
    yearly_years: int | None = Field(default=None, ge=0, le=MAX_YEARLY_YEARS)
    weekly_day: Weekday = "sun"
    monthly_day: int | Literal["last"] = 1
    yearly_month: int = Field(default=1, ge=1, le=12)

    @field_validator("daily_days", "weekly_weeks", "monthly_months", "yearly_years")
    @classmethod
    def _zero_is_none(cls, value: int | None) -> int | None:
        # One spelling for "not kept", so comparisons and dumps do not see two.
        return value or None

    @field_validator("monthly_day", mode="before")
    @classmethod
    def _monthly_day(cls, value: Any) -> Any:
        if value == "last" or (type(value) is int and 1 <= value <= 28):
            return value
        raise ValueError(
            f'monthly_day must be 1 to 28 or "last", not {value!r} '
            "(days 29 to 31 are missing from some months)"
        )

    def anchor_in_month(self, year: int, month: int) -> dt.date:
        """The ``monthly_day`` of a given month as a date ("last" resolved)."""
        if self.monthly_day == "last":
            return dt.date(year, month, calendar.monthrange(year, month)[1])
        return dt.date(year, month, self.monthly_day)


class VerifySchedule(_Strict):
    """Which of a VM's points the scheduler verifies (reads back every chunk), one at a time
    per VM, after the backups (Proxmox Backup Server's verify jobs):

    - ``sample = "new"`` (default): each point made in the last ``every_days`` days, once
      (Proxmox's "skip verified"); older points never verified are left alone;
    - ``sample = "all"``: every point, and each again once its last verify is ``every_days``
      days old (Proxmox's "re-verify after").

    A verify reads the point's whole disks, not just what its backup wrote: "all" reads
    every point of the VM every ``every_days`` days."""

    every_days: int = Field(default=7, ge=1, le=MAX_DAILY_DAYS)
    sample: Literal["new", "all"] = "new"

    def due(self, created: dt.datetime, last: dt.datetime | None, now: dt.datetime) -> bool:
        """Whether a point made at ``created``, last verified at ``last`` (None: never), is
        due a verify at ``now``."""
        period = dt.timedelta(days=self.every_days)
        if self.sample == "new":
            return last is None and now - created < period
        return last is None or now - last >= period


class Policy(_Strict):
    """A named schedule and retention; ``retention`` defaults depend on ``schedule.kind``;
    ``verify``, if given, has the scheduler verify the VM's points."""

    name: str = Field(min_length=1, pattern=_NAME)
    schedule: Schedule
    retention: Retention = Field(default_factory=Retention, validate_default=True)
    verify: VerifySchedule | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults_for_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        schedule = data.get("schedule")
        kind = (
            schedule.get("kind") if isinstance(schedule, dict) else getattr(schedule, "kind", None)
        )
        defaults = _KIND_DEFAULTS.get(kind) if isinstance(kind, str) else None
        if defaults is None:
            return data  # the schedule's own validation reports the bad kind
        retention = data.get("retention", {})
        if isinstance(retention, dict):
            retention = {**defaults, **retention}
        elif isinstance(retention, Retention):
            missing = {k: v for k, v in defaults.items() if k not in retention.model_fields_set}
            retention = retention.model_copy(update=missing)
        return {**data, "retention": retention}

    @field_validator("retention")
    @classmethod
    def _fits_schedule(cls, value: Retention, info: ValidationInfo) -> Retention:
        schedule = info.data.get("schedule")
        if not isinstance(schedule, Schedule):
            return value
        kind = schedule.kind
        if kind != "hourly" and value.instant_restore_days > STANDARD_INSTANT_RESTORE_MAX:
            raise ValueError(
                f"instant_restore_days must be 1 to {STANDARD_INSTANT_RESTORE_MAX} for a {kind} "
                f"schedule, not {value.instant_restore_days} (hourly schedules allow up to "
                f"{ENHANCED_INSTANT_RESTORE_MAX})"
            )
        if kind == "weekly":
            if value.daily_days:
                raise ValueError(
                    "daily_days does not apply to a weekly schedule (use weekly_weeks)"
                )
            if not value.weekly_weeks:
                raise ValueError(f"a weekly schedule needs weekly_weeks (1 to {MAX_WEEKLY_WEEKS})")
        elif not value.daily_days:
            raise ValueError(f"a {kind} schedule needs daily_days (1 to {MAX_DAILY_DAYS})")
        return value


# Azure's default policy: daily, 30 daily points, 2 instant-restore days. Azure picks the hour
# when the vault is created; 22:30 UTC is a fixed, off-peak choice.
DEFAULT_POLICY: Final = Policy(
    name="default",
    schedule=Schedule(kind="daily", time="22:30", timezone="UTC"),
    retention=Retention(instant_restore_days=2, daily_days=30),
)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else f".{item}"
    return out


def parse_policy(name: str, table: dict[str, Any], where: str = "policies") -> Policy:
    """Validate one ``[policies.NAME]`` table; failures become one line naming the field.

    The message reads ``policies.NAME.schedule.time: '25:00' is not a time of day ...`` and
    mentions how many other problems there are, like the inventory's.
    """
    try:
        return Policy.model_validate({**table, "name": name})
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        path = f"{where}.{name}{_loc(tuple(first['loc']))}"
        raise PolicyError(f"{path}: {message}{more}") from None
