"""`jobs list` at 100 columns: a line per job, point ids whole, errors cut to one line."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from vmvault.cli.render import jobs as render_jobs

POINT = "20261129T124701.272561Z-3c07d97d"


def _job(n: int, **fields: Any) -> dict[str, Any]:
    job = {
        "id": n,
        "kind": "backup",
        "vm": "web01",
        "state": "succeeded",
        "created_at": "2026-11-29T12:46:59+00:00",
        "queued_at": "2026-11-29T12:47:00+00:00",
        "started_at": "2026-11-29T12:47:00+00:00",
        "finished_at": "2026-11-29T12:49:05+00:00",
        "point_id": None,
        "bytes_read": 40 * 2**20,
        "bytes_written": 17 * 2**20,
        "error_message": None,
    }
    return {**job, **fields}


def _printed(monkeypatch: pytest.MonkeyPatch, width: int, jobs: list[dict[str, Any]]) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(render_jobs, "console", console)
    render_jobs.print_jobs(jobs)
    return console.export_text()


def test_jobs_fit_100_columns_a_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    error = "disk /var/lib/vms/db01-data.img does not exist, and a long reason " * 3
    jobs = [
        _job(3, point_id=POINT),
        _job(2, state="failed", vm="db01", error_message=error + "\nsecond line"),
        _job(1, kind="maintenance", vm=None, state="running", finished_at=None),
    ]
    lines = _printed(monkeypatch, 100, jobs).splitlines()
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(rows) == 3 and all(len(line) <= 100 for line in lines)
    assert "20261129T124701" in rows[0] and "…" not in rows[0]  # the point's unique prefix
    assert "2 min" in rows[0] and "40.0 MiB" in rows[0] and "11-29 12:47" in rows[0]
    assert "disk /var/" in rows[1] and rows[1].rstrip().endswith("…")
    assert "second line" not in "\n".join(lines)
    assert "maintenance" in rows[2] and "running" in rows[2]


def test_a_narrow_terminal_never_cuts_a_point_id(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _printed(monkeypatch, 80, [_job(7, point_id=POINT, vm="a-rather-long-vm-name")])
    assert "20261129T124701" in text
