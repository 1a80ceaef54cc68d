"""The figures of "are we protected?": pure functions over plain data (the vault's points,
the catalog's job rows, each VM's schedule, the time now), so each is tested on its own.

Sizes are bytes and times seconds; a ratio or rate that would divide by zero is None.
A point's figures come from its disks' statistics (``engine.backup.DiskStats``): ``read``
(bytes read from the disk), ``zero`` (read, all zero), ``unchanged`` (the parent point's
chunk), ``deduplicated`` (changed, but the vault had the chunk), ``new`` (chunks this backup
added, before compression), ``stored`` (what they take in the vault, compressed and
encrypted), ``changed`` (``deduplicated + new``) and the disk's ``size``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

from vmvault.model.point import RecoveryPoint
from vmvault.policy import WEEKDAYS, Schedule

DAY = timedelta(days=1)
# A backup may start late (a queue, a busy pool) and take a while: a VM is still protected
# until its schedule's longest interval plus this share of it has passed.
GRACE = 0.25

PROTECTED = "protected"
AT_RISK = "at_risk"
NEVER = "never_backed_up"
NOT_SCHEDULED = "not_scheduled"

SUCCEEDED = "succeeded"
FAILED = "failed"


def moment(value: datetime | str | None) -> datetime | None:
    """A time as an aware UTC datetime (the catalog's datetimes, the points' ISO strings)."""
    if value is None or value == "":
        return None
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def point_time(point: RecoveryPoint) -> datetime:
    """When a point's backup completed (older points: when it was created)."""
    done = moment(point.get("completed")) or moment(point["created"])
    assert done is not None
    return done


def schedule_interval(schedule: Schedule) -> timedelta:
    """The longest time between two starts of ``schedule``.

    daily: 24 h. weekly: the longest gap between its days (7 days for one day a week).
    hourly: ``every_hours`` within the window, but the night between the day's last start
    and the next day's first is longer when the window is short: the longer of the two.
    """
    if schedule.kind == "daily":
        return DAY
    if schedule.kind == "weekly":
        days = sorted(WEEKDAYS.index(d) for d in schedule.days or ())
        if len(days) < 2:
            return 7 * DAY
        gaps = [b - a for a, b in pairwise(days)] + [days[0] + 7 - days[-1]]
        return max(gaps) * DAY
    every = schedule.every_hours or 24
    window = schedule.window_hours or 24
    starts = -(-window // every)  # time, time + every, ... while inside the window
    last = (starts - 1) * every
    return timedelta(hours=max(every, 24 - last))


def rpo(schedule: Schedule) -> timedelta:
    """How old a VM's newest good backup may be while it counts as protected: the schedule's
    longest interval plus ``GRACE`` (25 %) of it (daily: 30 h; weekly on one day: 8.75 days;
    every 4 h all day: 5 h)."""
    return schedule_interval(schedule) * (1 + GRACE)


@dataclass(frozen=True)
class Protection:
    vm: str
    status: str  # PROTECTED, AT_RISK, NEVER or NOT_SCHEDULED
    rpo_seconds: float | None
    last_good: datetime | None  # the newest point's completion
    age_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "status": self.status,
            "rpo_seconds": self.rpo_seconds,
            "last_good": self.last_good.isoformat() if self.last_good else None,
            "age_seconds": self.age_seconds,
        }


def protection(
    schedules: Mapping[str, Schedule | None], points: Iterable[RecoveryPoint], now: datetime
) -> list[Protection]:
    """Each VM of ``schedules`` (None: no policy) against its RPO. A recovery point is a
    successful backup (a failed one leaves none); the newest one's completion counts."""
    newest: dict[str, datetime] = {}
    for point in points:
        done = point_time(point)
        if point["vm"] not in newest or done > newest[point["vm"]]:
            newest[point["vm"]] = done
    result = []
    for vm, schedule in sorted(schedules.items()):
        last = newest.get(vm)
        age = (now - last).total_seconds() if last else None
        if schedule is None:
            result.append(Protection(vm, NOT_SCHEDULED, None, last, age))
            continue
        limit = rpo(schedule).total_seconds()
        status = NEVER if age is None else PROTECTED if age <= limit else AT_RISK
        result.append(Protection(vm, status, limit, last, age))
    return result


def job_counts(jobs: Iterable[Mapping[str, Any]], now: datetime) -> dict[str, dict[str, int]]:
    """Jobs of any kind that finished in the last 24 h and 7 days: ``succeeded`` (and
    partially succeeded) and ``failed``. Queued, running and cancelled jobs are not counted."""
    counts = {"24h": {SUCCEEDED: 0, FAILED: 0}, "7d": {SUCCEEDED: 0, FAILED: 0}}
    for job in jobs:
        finished = moment(job.get("finished_at"))
        outcome = job_outcome(job["state"])
        if finished is None or outcome is None or finished > now:
            continue
        for key, span in (("24h", DAY), ("7d", 7 * DAY)):
            if now - finished <= span:
                counts[key][outcome] += 1
    return counts


def job_outcome(state: str) -> str | None:
    if state in ("succeeded", "partially_succeeded"):
        return SUCCEEDED
    return FAILED if state == "failed" else None


def _disk_sum(point: RecoveryPoint, field: str) -> int:
    stats: list[Mapping[str, Any]] = [d["stats"] for d in point["disks"]]
    return sum(int(one[field]) for one in stats)


def stored_bytes(point: RecoveryPoint) -> int:
    """What a point's backup added to the vault (compressed and encrypted)."""
    return _disk_sum(point, "stored")


def usage(points: Sequence[RecoveryPoint], now: datetime) -> dict[str, int]:
    """``stored``: what the vault's points' backups added to it (the vault's usage by its
    points; GC frees the chunks only deleted points used). ``growth_7d``: what the last 7
    days' backups added (what retention deleted in that time is not subtracted)."""
    return {
        "stored": sum(stored_bytes(p) for p in points),
        "growth_7d": sum(stored_bytes(p) for p in points if now - point_time(p) <= 7 * DAY),
    }


def ratios(points: Iterable[RecoveryPoint]) -> dict[str, float | None]:
    """Over all the points' disks:

    - ``dedup``: (unchanged + deduplicated + new) / new: the non-zero bytes the backups
      read, per byte of new chunks they had to add (unchanged and already-stored chunks
      are the savings; zero blocks and blocks change tracking skipped are not counted);
    - ``compression``: new / stored: bytes of the new chunks before compression, per byte
      they take in the vault (compressed and encrypted, so incompressible data is just
      under 1).
    """
    points = list(points)
    new = sum(_disk_sum(p, "new") for p in points)
    seen = new + sum(_disk_sum(p, "unchanged") + _disk_sum(p, "deduplicated") for p in points)
    stored = sum(stored_bytes(p) for p in points)
    return {
        "dedup": round(seen / new, 3) if new else None,
        "compression": round(new / stored, 3) if stored else None,
    }


def stored_per_day(
    points: Iterable[RecoveryPoint], now: datetime, days: int = 30
) -> list[dict[str, Any]]:
    """The last ``days`` days (UTC, oldest first, today last): what each day's backups added
    (``stored``) and the vault's usage by the points held at that day's end (``total``)."""
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    added: dict[date, int] = {}
    before = 0
    for point in points:
        day = point_time(point).date()
        if day < first:
            before += stored_bytes(point)
        elif day <= today:
            added[day] = added.get(day, 0) + stored_bytes(point)
    rows, total = [], before
    for i in range(days):
        day = first + timedelta(days=i)
        total += added.get(day, 0)
        rows.append({"day": day.isoformat(), "stored": added.get(day, 0), "total": total})
    return rows


def backup_figures(point: RecoveryPoint) -> dict[str, Any]:
    """One backup: ``duration`` (created to completed, s), ``read`` and ``throughput``
    (bytes read / duration), ``changed`` and ``change_rate`` (changed bytes / the disks'
    size), ``stored``."""
    start, end = moment(point["created"]), point_time(point)
    assert start is not None
    seconds = max((end - start).total_seconds(), 0.0)
    read, changed = _disk_sum(point, "read"), _disk_sum(point, "changed")
    size = sum(int(d["size"]) for d in point["disks"])
    return {
        "duration": seconds,
        "read": read,
        "throughput": read / seconds if seconds else None,
        "changed": changed,
        "change_rate": changed / size if size else None,
        "stored": stored_bytes(point),
    }


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def per_vm(
    points: Iterable[RecoveryPoint], jobs: Iterable[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per VM, over the given points and backup jobs: the mean ``duration``, ``throughput``
    and ``change_rate`` of its backups (``backup_figures``), their count, ``last_good`` (its
    newest point's completion, also for a VM the inventory does not name), and ``success_rate``:
    backup jobs that succeeded (or partially) / those that finished (cancelled ones are not
    counted; None without such jobs, as for backups made from the command line)."""
    figures: dict[str, list[dict[str, Any]]] = {}
    newest: dict[str, datetime] = {}
    for point in points:
        figures.setdefault(point["vm"], []).append(backup_figures(point))
        completed = point_time(point)
        newest[point["vm"]] = max(completed, newest.get(point["vm"], completed))
    outcomes: dict[str, list[str]] = {}
    for job in jobs:
        outcome = job_outcome(job["state"])
        if job["kind"] == "backup" and job.get("vm") and outcome:
            outcomes.setdefault(job["vm"], []).append(outcome)
    result = {}
    for vm in sorted(figures.keys() | outcomes.keys()):
        mine, done = figures.get(vm, []), outcomes.get(vm, [])
        result[vm] = {
            "backups": len(mine),
            "duration": _mean(f["duration"] for f in mine),
            "throughput": _mean(f["throughput"] for f in mine),
            "change_rate": _mean(f["change_rate"] for f in mine),
            "success_rate": done.count(SUCCEEDED) / len(done) if done else None,
            "last_good": newest[vm].isoformat() if vm in newest else None,
        }
    return result


def summary(
    schedules: Mapping[str, Schedule | None],
    points: Sequence[RecoveryPoint],
    jobs: Sequence[Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """Everything the dashboard's tiles and the reports page show, as JSON-ready values."""
    vms = protection(schedules, points, now)
    tally = {s: 0 for s in (PROTECTED, AT_RISK, NEVER, NOT_SCHEDULED)}
    for vm in vms:
        tally[vm.status] += 1
    return {
        "generated": now.isoformat(),
        "protection": tally,
        "vms": [vm.to_dict() for vm in vms],
        "jobs": job_counts(jobs, now),
        "usage": usage(points, now),
        "ratios": ratios(points),
        "per_day": stored_per_day(points, now),
        "per_vm": per_vm(points, jobs),
    }
