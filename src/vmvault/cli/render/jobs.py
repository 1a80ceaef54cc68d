"""Human output of `vmvault jobs` and `vmvault worker`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from vmvault.cli.output import console, human_bytes
from vmvault.point_refs import short_refs
from vmvault.units import human_duration, human_rate

JOB_COLUMNS = ("id", "kind", "vm", "state", "queued", "took", "point", "read", "written")
RIGHT_ALIGNED = {"id", "took", "read", "written"}


def print_jobs(jobs: list[dict[str, Any]]) -> None:
    """Jobs, newest first, a line each: what, for which VM, when, how long, what they moved.

    The point is its shortest prefix unique among the jobs shown (never cut); an error
    shows its first line, cut to the width the other columns leave (`jobs show ID` has it
    whole)."""
    refs = short_refs(j["point_id"] for j in jobs if j["point_id"])
    rows = [
        [
            str(j["id"]),
            j["kind"],
            j["vm"] or "",
            j["state"],
            _short_time(j["queued_at"] or j["started_at"] or j["created_at"]),
            _took(j),
            refs.get(j["point_id"] or "", ""),
            human_bytes(_read(j)),
            human_bytes(j["bytes_written"] or 0),
        ]
        for j in jobs
    ]
    # Each column as wide as its widest cell; what the terminal lacks is taken from the
    # error (down to 5 characters: the rest is in `jobs show`), then from the VM name (it
    # folds onto more lines), never from an id.
    widths = [max([len(col)] + [len(r[n]) for r in rows]) for n, col in enumerate(JOB_COLUMNS)]
    errors = [(j["error_message"] or "").partition("\n")[0] for j in jobs]
    error_width = max([len("error")] + [len(e) for e in errors])
    spare = console.width - sum(widths) - error_width - len(widths) - 2  # one space between
    if spare < 0:
        error_width = max(error_width + spare, 5)
        spare = console.width - sum(widths) - error_width - len(widths) - 2
    vm = JOB_COLUMNS.index("vm")
    if spare < 0:
        widths[vm] = max(widths[vm] + spare, 8)
    table = Table(title="jobs", box=box.SIMPLE_HEAD, padding=0)
    for col, width in zip(JOB_COLUMNS, widths, strict=True):
        right = col in RIGHT_ALIGNED
        table.add_column(col, justify="right" if right else "left", width=width, overflow="fold")
    table.add_column("error", width=error_width, no_wrap=True, overflow="ellipsis")
    for row, error in zip(rows, errors, strict=True):
        table.add_row(*row, error)
    console.print(table)


def _short_time(stamp: str | None) -> str:
    """'2026-11-29T12:47:01.27+00:00' -> '11-29 12:47' (UTC, as stored)."""
    return f"{stamp[5:10]} {stamp[11:16]}" if stamp else ""


def _took(job: dict[str, Any]) -> str:
    """How long the job ran (so far, for a running one); nothing before it started."""
    started, finished = job["started_at"], job["finished_at"]
    if not started:
        return ""
    end = datetime.fromisoformat(finished) if finished else datetime.now(UTC)
    return human_duration((end - datetime.fromisoformat(started)).total_seconds())


def print_job(doc: dict[str, Any]) -> None:
    """One job in full: what it is, its times, what it moved and how fast, its error whole,
    then its details and its progress per disk, a field a line."""
    what = f"job {doc['id']}: {doc['kind']}" + (f" of {doc['vm']}" if doc["vm"] else "")
    console.print(f"{escape(what)}, [bold]{doc['state']}[/]", highlight=False)
    fields: list[tuple[str, str]] = [
        ("queued", _when(doc["queued_at"] or doc["created_at"])),
        ("waited", human_duration(doc["queue_wait"]) if doc["queue_wait"] is not None else ""),
        ("started", _when(doc["started_at"])),
        ("finished", _when(doc["finished_at"])),
        ("took", _took(doc)),
        ("attempts", str(doc["attempts"] or "")),
        ("worker", doc["worker"] or ""),
        ("point", doc["point_id"] or ""),
        ("read", _amount(doc["bytes_read"]) + _rate(doc)),
        ("so far", _pace(doc)),
        ("changed", _amount(doc["bytes_changed"])),
        ("sent", _amount(doc["bytes_sent"])),
        ("written", _amount(doc["bytes_written"])),
        ("cancel", "asked for" if doc["cancel_requested"] else ""),
        ("error", f"{doc['error_code']}: {doc['error_message']}" if doc["error_code"] else ""),
    ]
    for label, value in fields:
        if value:
            console.print(f"  {label:10} {escape(value)}", highlight=False, soft_wrap=True)
    details = [(key, value) for key, value in flat_fields(doc.get("details") or {}) if value]
    if details:
        console.print("  details")
    width = max((len(key) for key, _ in details), default=0)
    for key, value in details:
        console.print(f"    {key:{width}} {escape(value)}", highlight=False, soft_wrap=True)
    for disk, p in sorted((doc.get("progress") or {}).items()):
        done, total = p.get("done", 0), p.get("total", 0)
        share = f" ({100 * done / total:.0f} %)" if total else ""
        line = f"{p.get('operation', '')} {human_bytes(done)} of {human_bytes(total)}{share}"
        console.print(f"  progress   {escape(disk)}: {line}", highlight=False)


def flat_fields(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested details as (dotted key, text) pairs: {'a': {'b': 1}} -> [('a.b', '1')]; a
    list of plain values is one comma-separated line, a list of records numbered keys."""
    if isinstance(value, dict):
        pairs: list[tuple[str, str]] = []
        for key, inner in value.items():
            pairs += flat_fields(inner, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return [p for n, v in enumerate(value) for p in flat_fields(v, f"{prefix}[{n}]")]
    if isinstance(value, list):
        return [(prefix, ", ".join(map(str, value)) or "-")]
    return [(prefix, "" if value is None else str(value))]


def _when(stamp: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC' (as the dashboard writes it)."""
    if not stamp:
        return ""
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _read(job: dict[str, Any]) -> int:
    """What the job read: its row's count once it ended, its progress records' while it runs."""
    live = job.get("live") or {}
    return int(job["bytes_read"] or (live.get("read") if job["state"] == "running" else 0) or 0)


def _pace(job: dict[str, Any]) -> str:
    """A running job's figures from its progress records: read, rate, time left."""
    live = job.get("live") or {}
    if job["state"] != "running" or live.get("elapsed") is None:
        return ""
    parts = [f"{human_bytes(live['read'])} read" if live.get("read") is not None else ""]
    parts.append(f"{human_bytes(live['rate'])}/s" if live.get("rate") else "")
    parts.append(f"about {human_duration(live['eta'])} left" if live.get("eta") is not None else "")
    return ", ".join(p for p in parts if p)


def _amount(n: int | None) -> str:
    return human_bytes(n) if n else ""


def _rate(job: dict[str, Any]) -> str:
    """', 57.2 MiB/s': the bytes read over the time the job ran (a finished job)."""
    if not (job["bytes_read"] and job["started_at"] and job["finished_at"]):
        return ""
    ran = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
    return f", {human_rate(job['bytes_read'], ran.total_seconds())}"


def print_cancelled(doc: dict[str, Any]) -> None:
    console.print(f"job {doc['id']}: {doc['state']}")


def print_queued(job_id: int, vm: str) -> None:
    console.print(f"queued job {job_id}: backup of {vm}")


def print_worker_ran(started: list[int]) -> None:
    console.print(f"ran {len(started)} job(s): {', '.join(map(str, started)) or '-'}")
