"""The figures of "are we protected?" and the monthly report, computed from plain data."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vmvault.policy import Schedule
from vmvault.reports.monthly import (
    InvalidMonth,
    month_span,
    monthly_rows,
    previous_month,
    to_csv,
    to_pdf,
)
from vmvault.reports.summary import (
    backup_figures,
    job_counts,
    per_vm,
    protection,
    ratios,
    rpo,
    schedule_interval,
    stored_per_day,
    summary,
    usage,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
DAILY = Schedule(kind="daily", time="22:00")


def stats(**values: int) -> dict[str, Any]:
    fields = ("allocated", "read", "zero", "unchanged", "deduplicated", "skipped", "new")
    doc: dict[str, Any] = dict.fromkeys(fields, 0) | {"stored": 0, "records_new": 0}
    doc |= {"size": 0, "seconds": 0.0} | values
    doc["changed"] = doc["deduplicated"] + doc["new"]
    return doc


def point(vm: str, done: datetime, seconds: float = 100, size: int = 1000, **values: int) -> Any:
    created = done - timedelta(seconds=seconds)
    disk = {"name": "os", "source": "x", "size": size, "parent": None, "manifest": "m"}
    return {
        "id": f"{vm}-{done.isoformat()}",
        "vm": vm,
        "created": created.isoformat(),
        "completed": done.isoformat(),
        "parent": None,
        "type": "full",
        "consistency": {"level": "crash", "reason": ""},
        "disks": [disk | {"stats": stats(**values)}],
    }


def job(state: str, finished: datetime, vm: str = "web01", kind: str = "backup") -> Any:
    return {"kind": kind, "vm": vm, "state": state, "started_at": None, "finished_at": finished}


def test_rpo_is_the_longest_interval_of_the_schedule_plus_a_quarter() -> None:
    assert schedule_interval(DAILY) == 24 * H and rpo(DAILY) == 30 * H
    one_day = Schedule(kind="weekly", time="01:00", days=("sun",))
    assert schedule_interval(one_day) == timedelta(days=7)
    two_days = Schedule(kind="weekly", time="01:00", days=("mon", "thu"))
    assert schedule_interval(two_days) == timedelta(days=4)  # thursday to monday
    all_day = Schedule(kind="hourly", time="00:00", every_hours=4, window_hours=23)
    assert schedule_interval(all_day) == 4 * H and rpo(all_day) == 5 * H
    # starts at 08, 12, 16: the night from 16:00 to 08:00 is the longest gap
    office = Schedule(kind="hourly", time="08:00", every_hours=4, window_hours=12)
    assert schedule_interval(office) == 16 * H


def test_protection_by_the_newest_point_against_the_rpo() -> None:
    schedules = {"fresh": DAILY, "stale": DAILY, "never": DAILY, "adhoc": None}
    points = [
        point("fresh", NOW - 40 * H),
        point("fresh", NOW - 29 * H),  # the newest counts: within 30 h
        point("stale", NOW - 31 * H),
        point("adhoc", NOW - 100 * H),
        point("gone", NOW - H),  # not in the inventory: not listed
    ]
    got = {p.vm: p for p in protection(schedules, points, NOW)}
    assert got.keys() == schedules.keys()
    assert got["fresh"].status == "protected" and got["fresh"].age_seconds == 29 * 3600
    assert got["stale"].status == "at_risk" and got["stale"].rpo_seconds == 30 * 3600
    assert got["never"].status == "never_backed_up" and got["never"].last_good is None
    assert got["adhoc"].status == "not_scheduled" and got["adhoc"].rpo_seconds is None


def test_jobs_counted_by_outcome_in_24_hours_and_7_days() -> None:
    jobs = [
        job("failed", NOW - 2 * H),
        job("succeeded", NOW - 3 * H, kind="verify"),
        job("partially_succeeded", NOW - 30 * H),
        job("failed", NOW - timedelta(days=6)),
        job("failed", NOW - timedelta(days=8)),  # too old
        job("cancelled", NOW - H),  # neither
        {"kind": "backup", "vm": "x", "state": "running", "finished_at": None},
    ]
    assert job_counts(jobs, NOW) == {
        "24h": {"succeeded": 1, "failed": 1},
        "7d": {"succeeded": 2, "failed": 2},
    }


def test_usage_growth_and_stored_bytes_per_day() -> None:
    points = [
        point("a", NOW - timedelta(days=40), stored=500),
        point("a", NOW - timedelta(days=8), stored=100),
        point("a", NOW - timedelta(days=2), stored=30),
        point("b", NOW - timedelta(days=2), stored=20),
        point("b", NOW - H, stored=7),
    ]
    assert usage(points, NOW) == {"stored": 657, "growth_7d": 57}
    days = stored_per_day(points, NOW, days=10)
    assert len(days) == 10 and days[-1]["day"] == "2026-03-10"
    assert days[0] == {"day": "2026-03-01", "stored": 0, "total": 500}
    assert days[1] == {"day": "2026-03-02", "stored": 100, "total": 600}
    assert days[7] == {"day": "2026-03-08", "stored": 50, "total": 650}
    assert days[-1] == {"day": "2026-03-10", "stored": 7, "total": 657}


def test_dedup_and_compression_ratios() -> None:
    points = [
        point("a", NOW, unchanged=600, deduplicated=200, new=200, stored=100, zero=999),
        point("b", NOW, unchanged=0, deduplicated=0, new=200, stored=100),
    ]
    # (600 + 200 + 400) / 400 read per new byte; 400 new bytes took 200 in the vault
    assert ratios(points) == {"dedup": 3.0, "compression": 2.0}
    assert ratios([point("a", NOW)]) == {"dedup": None, "compression": None}


def test_a_backups_duration_throughput_and_change_rate() -> None:
    figures = backup_figures(
        point("a", NOW, seconds=50, size=4000, read=1000, new=300, deduplicated=100, stored=150)
    )
    assert figures == {
        "duration": 50.0,
        "read": 1000,
        "throughput": 20.0,
        "changed": 400,
        "change_rate": 0.1,
        "stored": 150,
    }


def test_per_vm_means_and_success_rate() -> None:
    points = [
        point("a", NOW - H, seconds=10, read=100, size=1000, new=100),
        point("a", NOW, seconds=30, read=900, size=1000, new=300),
    ]
    jobs = [
        job("succeeded", NOW, vm="a"),
        job("partially_succeeded", NOW, vm="a"),
        job("failed", NOW, vm="a"),
        job("cancelled", NOW, vm="a"),
        job("failed", NOW, vm="b"),
        job("failed", NOW, vm="a", kind="verify"),  # not a backup
    ]
    got = per_vm(points, jobs)
    assert got["a"] == {
        "backups": 2,
        "duration": 20.0,
        "throughput": 20.0,  # (10 + 30) / 2
        "change_rate": 0.2,
        "success_rate": pytest.approx(2 / 3),
        "last_good": NOW.isoformat(),  # the newer point's
    }
    assert got["b"] == {
        "backups": 0,
        "duration": None,
        "throughput": None,
        "change_rate": None,
        "success_rate": 0.0,
        "last_good": None,
    }


def test_summary_tallies_protection() -> None:
    got = summary({"a": DAILY, "b": DAILY}, [point("a", NOW - H, stored=5)], [], NOW)
    assert got["protection"] == {
        "protected": 1,
        "at_risk": 0,
        "never_backed_up": 1,
        "not_scheduled": 0,
    }
    assert got["usage"] == {"stored": 5, "growth_7d": 5} and len(got["per_day"]) == 30


def test_months() -> None:
    assert month_span("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert previous_month(datetime(2026, 1, 3, tzinfo=UTC)) == "2025-12"
    assert previous_month(NOW) == "2026-02"
    for wrong in ("2026-13", "2026-00", "26-01", "2026-1", "9999-12"):
        with pytest.raises(InvalidMonth):
            month_span(wrong)


def test_monthly_rows_csv_and_pdf() -> None:
    feb = datetime(2026, 2, 10, tzinfo=UTC)
    points = [
        point("a", datetime(2026, 1, 31, 23, tzinfo=UTC), stored=999),  # January
        point("a", feb, seconds=10, read=100, new=40, stored=20),
        point("a", feb + timedelta(days=1), seconds=30, read=300, new=60, stored=30),
        point("a", datetime(2026, 3, 1, 1, tzinfo=UTC), stored=999),  # March
    ]
    jobs = [
        job("succeeded", feb, vm="a"),
        job("failed", feb, vm="a"),
        job("failed", feb, vm="c"),
        job("failed", datetime(2026, 3, 1, tzinfo=UTC), vm="a"),  # March
    ]
    rows = monthly_rows("2026-02", ["a", "b"], points, jobs)
    assert [r["vm"] for r in rows] == ["a", "b", "c"]
    a, b, c = rows
    assert a == {
        "vm": "a",
        "backups_ok": 1,
        "backups_failed": 1,
        "last_good_backup": (feb + timedelta(days=1)).isoformat(),
        "stored_bytes": 50,
        "changed_bytes": 100,
        "mean_duration_s": 20.0,
        "mean_throughput_bytes_s": 10,
    }
    assert b["last_good_backup"] is None and b["mean_duration_s"] is None
    assert c["backups_failed"] == 1
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert parsed[0]["stored_bytes"] == "50" and parsed[1]["last_good_backup"] == ""
    assert to_pdf("2026-02", rows).startswith(b"%PDF")
