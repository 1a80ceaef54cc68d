"""Human output of `vmvault jobs` and `vmvault worker`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from vmvault.cli.output import console, human_bytes
from vmvault.cli.render.tables import when
from vmvault.point_refs import short_refs
from vmvault.units import human_duration, human_rate

JOB_COLUMNS = ("id", "kind", "vm", "state", "queued", "took", "point", "read", "written", "error")
RIGHT_ALIGNED = {"id", "took", "read", "written"}
# What a terminal too narrow for every column leaves out (`jobs show ID` and `--json` have
# them): first the bytes written, how long the job took, what it read, in turn; then long
# VM names are cut (with "…", to VM_MIN characters); then, if that is not enough, the
# point and the time the job was queued. Ids, states and error codes are always shown.
LEFT_OUT_FIRST = ("written", "took", "read")
LEFT_OUT_LAST = ("point", "queued")
VM_MIN = 8


def print_jobs(jobs: list[dict[str, Any]], *, filters: dict[str, str | None] | None = None) -> None:
    """Jobs, newest first, a line each: what, for which VM, when, how long, what they moved.

    No cell is ever split over lines, no id, state or point is cut: the point is its
    shortest prefix unique among the jobs shown, an error its code (`jobs show ID` has the
    message). A terminal too narrow for every column leaves some out (``LEFT_OUT_FIRST``,
    the table's caption names them) and cuts long VM names. No job at all is a line saying
    so, with the ``filters`` that matched nothing."""
    if not jobs:
        wanted = ", ".join(f"{name} {value}" for name, value in (filters or {}).items() if value)
        console.print(f"no jobs{f' ({wanted})' if wanted else ''}", highlight=False, soft_wrap=True)
        return
    refs = short_refs(j["point_id"] for j in jobs if j["point_id"])
    cells: dict[str, list[str]] = {
        "id": [str(j["id"]) for j in jobs],
        "kind": [j["kind"] for j in jobs],
        "vm": [j["vm"] or "" for j in jobs],
        "state": [j["state"] for j in jobs],
        "queued": [_short_time(j["queued_at"] or j["started_at"] or j["created_at"]) for j in jobs],
        "took": [_took(j) for j in jobs],
        "point": [refs.get(j["point_id"] or "", "") for j in jobs],
        "read": [human_bytes(_read(j)) for j in jobs],
        "written": [human_bytes(j["bytes_written"] or 0) for j in jobs],
        "error": [j.get("error_code") or "" for j in jobs],
    }
    widths = {col: max(len(cell) for cell in [col, *cells[col]]) for col in JOB_COLUMNS}
    vm_min = min(widths["vm"], VM_MIN)
    shown = list(JOB_COLUMNS)

    def overflow(vm: int) -> int:  # columns one space apart, no edge (show_edge=False)
        return sum(widths[c] for c in shown if c != "vm") + vm + len(shown) - 1 - console.width

    left_out = []
    for col, vm in [(c, widths["vm"]) for c in LEFT_OUT_FIRST] + [
        (c, vm_min) for c in LEFT_OUT_LAST
    ]:
        if overflow(vm) <= 0:
            break
        shown.remove(col)
        left_out.append(col)
    widths["vm"] = max(widths["vm"] - max(overflow(widths["vm"]), 0), vm_min)
    caption = f"{', '.join(left_out)}: left out at this width (jobs show ID)" if left_out else None
    table = Table(title="jobs", caption=caption, box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for col in shown:
        right = col in RIGHT_ALIGNED
        table.add_column(
            col,
            justify="right" if right else "left",
            width=widths[col],
            no_wrap=True,
            overflow="ellipsis",  # only a VM name is ever narrower than its cells
        )
    for n in range(len(jobs)):
        table.add_row(*(escape(cells[col][n]) for col in shown))  # a name is not markup
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
    console.print(f"{escape(what)}, [bold]{doc['state']}[/]", highlight=False, soft_wrap=True)
    fields: list[tuple[str, str]] = [
        ("queued", when(doc["queued_at"] or doc["created_at"])),
        ("waited", human_duration(doc["queue_wait"]) if doc["queue_wait"] is not None else ""),
        ("started", when(doc["started_at"])),
        ("finished", when(doc["finished_at"])),
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
        console.print("  details", soft_wrap=True)
    width = max((len(key) for key, _ in details), default=0)
    for key, value in details:
        console.print(f"    {key:{width}} {escape(value)}", highlight=False, soft_wrap=True)
    for disk, p in sorted((doc.get("progress") or {}).items()):
        done, total = p.get("done", 0), p.get("total", 0)
        share = f" ({100 * done / total:.0f} %)" if total else ""
        line = f"{p.get('operation', '')} {human_bytes(done)} of {human_bytes(total)}{share}"
        console.print(f"  progress   {escape(disk)}: {line}", highlight=False, soft_wrap=True)


def flat_fields(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested details as (dotted key, text) pairs: {'a': {'b': 1}} -> [('a.b', '1')]; a
    list of plain values is one comma-separated line, a list of records numbered keys; a
    plain value as ``detail_value`` writes it for its own key (the dotted key's last part)."""
    if isinstance(value, dict):
        pairs: list[tuple[str, str]] = []
        for key, inner in value.items():
            pairs += flat_fields(inner, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return [p for n, v in enumerate(value) for p in flat_fields(v, f"{prefix}[{n}]")]
    if isinstance(value, list):
        return [(prefix, ", ".join(map(str, value)) or "-")]
    return [(prefix, "" if value is None else detail_value(prefix.rpartition(".")[2], value))]


# Keys of a job's details that count bytes besides those with "bytes" in them: a new kind
# of job whose details name its figures so is shown in the same units.
BYTE_KEYS = {"size", "freed", "read", "written", "stored", "sent", "changed"}


def detail_value(key: str, value: Any) -> str:
    """A plain detail as people read it, by its key: a byte count in IEC units
    (``bytes_verified`` 205455360 -> '195.9 MiB'), seconds as '2.64 s'; others as they are.
    Counts of other things (``chunks``, ``blocks_read``) stay numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    words = key.split("_")
    if "bytes" in words or key in BYTE_KEYS or key.endswith("_size"):
        return human_bytes(value)
    if key == "seconds" or key.endswith("_seconds"):
        return f"{value:.2f} s"
    return str(value)


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
    console.print(f"job {doc['id']}: {doc['state']}", soft_wrap=True)


def print_queued(job_id: int, vm: str) -> None:
    console.print(f"queued job {job_id}: backup of {vm}", soft_wrap=True)


def print_worker_ran(started: list[int]) -> None:
    console.print(
        f"ran {len(started)} job(s): {', '.join(map(str, started)) or '-'}", soft_wrap=True
    )
