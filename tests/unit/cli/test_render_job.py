"""`jobs show`: one job as people read it, and the units every rate is shown in."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from vmvault.cli.render import jobs as render_jobs
from vmvault.units import human_duration, human_mb_rate, human_rate

JOB = {
    "id": 2,
    "kind": "backup",
    "vm": "db01",
    "state": "failed",
    "created_at": "2026-11-29T13:02:34.508934+00:00",
    "queued_at": "2026-11-29T13:02:34.508934+00:00",
    "started_at": "2026-11-29T13:02:47.000000+00:00",
    "finished_at": "2026-11-29T13:02:51.000000+00:00",
    "queue_wait": 12.5,
    "attempts": 3,
    "worker": "hv1:4242",
    "point_id": None,
    "bytes_read": 40 * 2**20,
    "bytes_changed": 0,
    "bytes_sent": 0,
    "bytes_written": 0,
    "error_code": "disk_not_found",
    "error_message": "disk /var/lib/vms/db01-data.img does not exist [see the inventory]",
    "cancel_requested": False,
    "details": {"consistency": {"level": "crash", "reason": "VM is stopped"}, "scripts": []},
    "progress": {"data": {"operation": "backup", "done": 2**30, "total": 4 * 2**30}},
    "percent": 25.0,
}


def test_jobs_show_renders_times_sizes_rates_and_details(monkeypatch: pytest.MonkeyPatch) -> None:
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(render_jobs, "console", console)
    render_jobs.print_job(JOB)
    text = console.export_text()
    assert text.splitlines()[0] == "job 2: backup of db01, failed"
    assert "queued     2026-11-29 13:02:34 UTC" in text and "waited     12 s" in text
    assert "read       40.0 MiB, 10.0 MiB/s" in text  # 40 MiB read in the 4 s it ran
    assert "took       4 s" in text and "attempts   3" in text
    # the error whole (its brackets are not markup), the details a field a line
    assert "disk_not_found: disk /var/lib/vms/db01-data.img does not exist [see the" in text
    assert "consistency.level  crash" in text and "consistency.reason VM is stopped" in text
    assert "progress   data: backup 1.0 GiB of 4.0 GiB (25 %)" in text
    assert "{" not in text and "41943040" not in text  # no Python dict, no raw byte count


def test_one_unit_convention_for_sizes_rates_and_durations() -> None:
    assert human_rate(3 * 2**20, 2.0) == "1.5 MiB/s" and human_rate(10, 0) == "-"
    assert human_mb_rate(60) == "57.2 MiB/s"  # the seed's 60 MB/s a disk
    assert [human_duration(s) for s in (4, 125, 3 * 3600, 2 * 86400)] == [
        "4 s",
        "2 min",
        "3.0 h",
        "2.0 days",
    ]


def test_a_running_job_shows_its_pace_so_far(monkeypatch: pytest.MonkeyPatch) -> None:
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(render_jobs, "console", console)
    running = {
        **JOB,
        "state": "running",
        "finished_at": None,
        "bytes_read": None,
        "error_code": None,
        "error_message": None,
        "live": {"elapsed": 20.0, "read": 2 * 2**30, "rate": 2**30 / 20, "eta": 60.0},
    }
    render_jobs.print_job(running)
    render_jobs.print_jobs([running])
    text = console.export_text()
    assert "so far     2.0 GiB read, 51.2 MiB/s, about 1 min left" in text
    listed = next(line for line in text.splitlines() if line.strip().startswith("2 backup"))
    assert "2.0 GiB" in listed  # the list's read column: read so far


def test_byte_counts_and_seconds_in_details_are_shown_in_units(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(render_jobs, "console", console)
    restore = {
        **JOB,
        "kind": "restore",
        "state": "succeeded",
        "error_code": None,
        "progress": {},
        "details": {
            "disk": "os",
            "size": 402653184,
            "chunks": 49,
            "bytes_verified": 205455360,
            "bytes_written": 205455360,
            "seconds": 2.644,
            "gc": {"bytes_freed": 0, "packs": 3, "deleted_packs": 1},
            "files": {"blocks_read": 12, "stored": 3 * 2**30},
            "replica": {"bytes": 1536, "verified_chunks": 7, "wait_seconds": 0.5},
            "snapshot": "in-place",
        },
    }
    render_jobs.print_job(restore)
    text = console.export_text()
    for key, shown in [
        ("size", "384.0 MiB"),
        ("bytes_verified", "195.9 MiB"),
        ("bytes_written", "195.9 MiB"),
        ("seconds", "2.64 s"),
        ("gc.bytes_freed", "0 B"),
        ("files.stored", "3.0 GiB"),
        ("replica.bytes", "1.5 KiB"),
        ("replica.wait_seconds", "0.50 s"),
        # counts of other things stay numbers, words stay words
        ("chunks", "49"),
        ("gc.packs", "3"),
        ("files.blocks_read", "12"),
        ("replica.verified_chunks", "7"),
        ("snapshot", "in-place"),
    ]:
        assert re.search(rf"^    {re.escape(key)} +{re.escape(shown)}$", text, re.M), key
    assert "402653184" not in text and "205455360" not in text and "2.644" not in text
