"""Human output of `vmvault jobs` and `vmvault worker`."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from vmvault.cli.output import console, human_bytes


def print_jobs(jobs: list[dict[str, Any]]) -> None:
    """Jobs, newest first: what, for which VM, how long they waited, what they moved."""
    table = Table(title="jobs")
    for col in ("id", "kind", "vm", "state", "queued", "wait", "point", "read", "written", "error"):
        table.add_column(col)
    for j in jobs:
        table.add_row(
            str(j["id"]),
            j["kind"],
            j["vm"] or "",
            j["state"],
            str(j["queued_at"] or j["started_at"])[:19],
            f"{j['queue_wait'] or 0:.0f} s",
            j["point_id"] or "",
            human_bytes(j["bytes_read"] or 0),
            human_bytes(j["bytes_written"] or 0),
            j["error_message"] or "",
        )
    console.print(table)


def print_job(doc: dict[str, Any]) -> None:
    """One job in full, a field a line."""
    for key, value in doc.items():
        console.print(f"{key:14} {value}")


def print_cancelled(doc: dict[str, Any]) -> None:
    console.print(f"job {doc['id']}: {doc['state']}")


def print_queued(job_id: int, vm: str) -> None:
    console.print(f"queued job {job_id}: backup of {vm}")


def print_worker_ran(started: list[int]) -> None:
    console.print(f"ran {len(started)} job(s): {', '.join(map(str, started)) or '-'}")
