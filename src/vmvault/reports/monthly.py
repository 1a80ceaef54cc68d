"""The monthly report: a row per VM of a calendar month (UTC), as CSV and as a PDF (a table
page and a chart page, drawn by matplotlib)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from vmvault.errors import UsageError
from vmvault.model.point import RecoveryPoint
from vmvault.reports.summary import (
    FAILED,
    SUCCEEDED,
    backup_figures,
    job_outcome,
    moment,
    point_time,
)
from vmvault.units import human_bytes, measured_duration

NOTHING = "\N{EN DASH}"  # a missing value in the PDF's table
COLUMNS = (
    "vm",
    "backups_ok",
    "backups_failed",
    "last_good_backup",
    "stored_bytes",
    "changed_bytes",
    "mean_duration_s",
    "mean_throughput_bytes_s",
)


class InvalidMonth(UsageError):
    code = "invalid_request"
    http_status = 422


def month_span(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` as its first instant and the next month's (UTC)."""
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}", month) or not 1 <= int(month[5:]) <= 12:
        raise InvalidMonth(f"month: {month!r} is not YYYY-MM")
    year, number = int(month[:4]), int(month[5:])
    if year < 1:
        raise InvalidMonth(f"month: {month!r} is out of range")
    start = datetime(year, number, 1, tzinfo=UTC)
    if number == 12:
        if year == 9999:
            raise InvalidMonth(f"month: {month!r} is out of range")
        return start, datetime(year + 1, 1, 1, tzinfo=UTC)
    return start, datetime(year, number + 1, 1, tzinfo=UTC)


def previous_month(now: datetime) -> str:
    """The month before ``now``'s, as YYYY-MM."""
    year, number = now.year, now.month - 1
    if number == 0:
        year, number = year - 1, 12
    return f"{year:04d}-{number:02d}"


def monthly_rows(
    month: str,
    vms: Iterable[str],
    points: Sequence[RecoveryPoint],
    jobs: Iterable[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Per VM (those named and those with points or backup jobs in the month): its backup
    jobs that finished in the month, succeeded (or partially) and failed; its newest point
    completed before the month's end; the month's points' stored and changed bytes, mean
    duration and throughput (see ``summary.backup_figures``; None without points)."""
    start, end = month_span(month)
    inside = [p for p in points if start <= point_time(p) < end]
    counts: dict[str, dict[str, int]] = {}
    for job in jobs:
        finished, outcome = moment(job.get("finished_at")), job_outcome(job["state"])
        if job["kind"] != "backup" or not job.get("vm") or not outcome or finished is None:
            continue
        if start <= finished < end:
            counts.setdefault(job["vm"], {SUCCEEDED: 0, FAILED: 0})[outcome] += 1
    names = set(vms) | {p["vm"] for p in inside} | counts.keys()
    rows = []
    for vm in sorted(names):
        mine = [backup_figures(p) for p in inside if p["vm"] == vm]
        good = [point_time(p) for p in points if p["vm"] == vm and point_time(p) < end]
        durations = [f["duration"] for f in mine]
        speeds = [f["throughput"] for f in mine if f["throughput"] is not None]
        tally = counts.get(vm, {SUCCEEDED: 0, FAILED: 0})
        rows.append(
            {
                "vm": vm,
                "backups_ok": tally[SUCCEEDED],
                "backups_failed": tally[FAILED],
                "last_good_backup": max(good).isoformat() if good else None,
                "stored_bytes": sum(f["stored"] for f in mine),
                "changed_bytes": sum(f["changed"] for f in mine),
                "mean_duration_s": round(sum(durations) / len(durations), 2) if mine else None,
                "mean_throughput_bytes_s": round(sum(speeds) / len(speeds)) if speeds else None,
            }
        )
    return rows


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows as CSV with a header line; a missing value is an empty field."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})
    return out.getvalue()


def _cells(row: Mapping[str, Any]) -> list[str]:
    def size(value: int | None) -> str:
        return NOTHING if value is None else human_bytes(value)

    last = row["last_good_backup"]
    return [
        row["vm"],
        str(row["backups_ok"]),
        str(row["backups_failed"]),
        last[:16].replace("T", " ") if last else "never",
        size(row["stored_bytes"]),
        size(row["changed_bytes"]),
        NOTHING if row["mean_duration_s"] is None else measured_duration(row["mean_duration_s"]),
        NOTHING
        if row["mean_throughput_bytes_s"] is None
        else size(row["mean_throughput_bytes_s"]) + "/s",
    ]


PAGE_ROWS = 45  # table rows per A4 landscape page
HEADER = ("VM", "OK", "Failed", "Last good (UTC)", "Stored", "Changed", "Duration", "Speed")
WIDTHS = (24, 4, 6, 16, 11, 11, 9, 13)


def _line(cells: Sequence[str]) -> str:
    """A table line in a monospace font: the VM name left, the figures right-aligned."""
    first, *rest = cells
    name = first if len(first) <= WIDTHS[0] else first[: WIDTHS[0] - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return name.ljust(WIDTHS[0]) + "".join(
        f" {c:>{w}}" for c, w in zip(rest, WIDTHS[1:], strict=True)
    )


def to_pdf(month: str, rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The report as a PDF (A4 landscape): the table, 45 VMs a page, as monospace text (one
    text object a page: matplotlib's cell tables take seconds), then each VM's stored and
    changed bytes as bars. Drawn again only when the rows change (drawing takes a while)."""
    return _drawn(month, json.dumps(rows, sort_keys=True))


@lru_cache(maxsize=4)
def _drawn(month: str, shown: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    a4 = (11.69, 8.27)
    rows = json.loads(shown)
    lines = [_line(_cells(r)) for r in rows] or ["no VMs"]
    out = io.BytesIO()
    with PdfPages(out, metadata={"Title": f"vmvault backup report {month}"}) as pdf:
        for first in range(0, len(lines), PAGE_ROWS):
            fig = plt.figure(figsize=a4)
            fig.text(0.05, 0.95, f"vmvault: backups in {month} (UTC)", fontsize=14, va="top")
            body = [_line(HEADER), "-" * len(_line(HEADER)), *lines[first : first + PAGE_ROWS]]
            fig.text(0.05, 0.89, "\n".join(body), family="monospace", fontsize=9, va="top")
            pdf.savefig(fig)
            plt.close(fig)
        fig, ax = plt.subplots(figsize=a4)
        names = [r["vm"] for r in rows]
        places = range(len(names))
        mib = 1 << 20
        stored = [r["stored_bytes"] / mib for r in rows]
        changed = [r["changed_bytes"] / mib for r in rows]
        ax.bar([i - 0.2 for i in places], stored, 0.4, label="stored")
        ax.bar([i + 0.2 for i in places], changed, 0.4, label="changed")
        ax.set_xticks(list(places), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("MiB")
        ax.set_title(f"Stored and changed bytes per VM, {month}")
        ax.legend()
        fig.tight_layout()
        pdf.savefig(fig)
        plt.close(fig)
    return out.getvalue()
