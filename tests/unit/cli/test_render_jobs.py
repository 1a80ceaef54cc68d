"""`jobs list` at 80, 100 and 120 columns: a line per job, no id, state, point or error
code split or cut; what a narrow terminal lacks room for is left out, and said so."""

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
        "error_code": None,
        "error_message": None,
    }
    return {**job, **fields}


def _printed(monkeypatch: pytest.MonkeyPatch, width: int, jobs: list[dict[str, Any]]) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(render_jobs, "console", console)
    render_jobs.print_jobs(jobs)
    return console.export_text()


LONG_VM = "customer-portal-db-replica-02"
LATER = "20261129T185724.001234Z-9a1b2c3d"  # shares "20261129T1" with POINT


def _history() -> list[dict[str, Any]]:
    error = "disk /var/lib/vms/db01-data.img does not exist, and a long reason " * 3
    return [
        _job(1013, vm=LONG_VM, point_id=LATER),
        _job(1012, state="failed", vm="db01", error_code="disk_not_found", error_message=error),
        _job(1011, kind="maintenance", vm=None, state="running", finished_at=None),
        _job(1010, kind="restore", vm=LONG_VM, state="partially_succeeded", point_id=POINT),
    ]


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()[:1].isdigit()]


@pytest.mark.parametrize("width", [80, 100, 120])
def test_every_job_is_one_line_nothing_split_or_cut(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    text = _printed(monkeypatch, width, _history())
    rows = _rows(text)
    assert len(rows) == 4 and all(len(line) <= width for line in text.splitlines())
    states = ("succeeded", "failed", "running", "partially_succeeded")
    for row, job_id, state in zip(rows, (1013, 1012, 1011, 1010), states, strict=True):
        assert row.lstrip().startswith(f"{job_id} ") and f" {state} " in f"{row} "
    # an error is its code alone
    assert rows[1].rstrip().endswith(" disk_not_found") and "does not exist" not in text
    assert all("11-29 12:47" in row for row in rows) and "maintenance" in rows[2]
    assert all(row.count("…") <= 1 for row in rows)  # a long VM name is all that is cut
    if width > 80:  # each point its shortest unique prefix, whole
        assert "20261129T185724 " in rows[0] and "20261129T124701 " in rows[3]


def test_120_columns_leave_out_only_what_was_written_and_how_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = _printed(monkeypatch, 120, _history())
    rows = _rows(text)
    assert LONG_VM in rows[0] and "40.0 MiB" in rows[0]
    assert "written, took: left out at this width (jobs show ID)" in text


def test_100_columns_cut_a_long_vm_name_not_a_point(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _printed(monkeypatch, 100, _history())
    assert "written, took, read: left out" in text and "MiB" not in text
    assert LONG_VM not in text and "customer-portal-db-…" in _rows(text)[0]


def test_80_columns_keep_ids_states_queued_times_and_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = _printed(monkeypatch, 80, _history())
    assert "written, took, read, point: left out" in text and "20261129T" not in text
    assert "customer-portal…" in _rows(text)[0]


def test_80_columns_keep_points_and_reads_for_usual_names(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [
        _job(1207, point_id=LATER),
        _job(1206, kind="restore", state="failed", error_code="disk_not_found"),
        _job(1205, point_id=POINT),
    ]
    text = _printed(monkeypatch, 80, jobs)
    rows = _rows(text)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "web01" in rows[0] and "20261129T185724 " in rows[0] and "40.0 MiB" in rows[0]
    assert "disk_not_found" in rows[1] and "…" not in text
    assert "written, took: left out" in text


def test_a_job_list_at_full_width_leaves_nothing_out(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _printed(monkeypatch, 120, [_job(7, point_id=POINT)])
    row = _rows(text)[0]
    assert "2 min" in row and "40.0 MiB" in row and "17.0 MiB" in row and "left out" not in text


def test_no_jobs_is_a_line_naming_the_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _printed_empty(monkeypatch, {"state": "failed", "vm": "nosuch"})
    assert text == "no jobs (state failed, vm nosuch)\n"
    assert _printed_empty(monkeypatch, {"state": None, "vm": None}) == "no jobs\n"


def _printed_empty(monkeypatch: pytest.MonkeyPatch, filters: dict[str, str | None]) -> str:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(render_jobs, "console", console)
    render_jobs.print_jobs([], filters=filters)
    return console.export_text()
