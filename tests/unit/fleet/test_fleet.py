"""The fleet read model: a VM's next run follows its own start, not only its policy; its
active job with its state; a running job's live figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vmvault.catalog.models import Job
from vmvault.fleet import fleet
from vmvault.inventory import parse_inventory
from vmvault.jobs.queue import live_figures


def test_next_run_honours_the_vms_own_start() -> None:
    inv = parse_inventory(
        """
[policies.nightly]
schedule = { kind = "daily", time = "22:00" }

[[vms]]
name = "early"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "/dev/null"

[[vms]]
name = "late"
policy = "nightly"
start = "23:30"
  [[vms.disks]]
  name = "os"
  path = "/dev/null"
""",
        "inv.toml",
    )
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    rows = {r["name"]: r for r in fleet(inv, [], {"late": "protected"}, [], now)}
    assert rows["early"]["next_run"] == "2026-11-27T22:00:00+00:00"
    assert rows["late"]["next_run"] == "2026-11-27T23:30:00+00:00"
    stopped = fleet(inv, [], {"late": "stopped-retain"}, [], now)
    assert [r["next_run"] is None for r in stopped] == [False, True]


def test_a_vms_row_shows_its_running_job_as_running() -> None:
    inv = parse_inventory(
        '[[vms]]\nname = "web"\n[[vms.disks]]\nname = "os"\npath = "/dev/null"\n', "inv.toml"
    )
    running = Job(id=7, kind="backup", vm="web", state="running")
    queued = Job(id=8, kind="backup", vm="web", state="queued")
    [row] = fleet(inv, [], {}, [running, queued])  # the API passes running jobs first
    assert (row["active_job"], row["active_job_state"]) == (7, "running")
    [idle] = fleet(inv, [], {}, [])
    assert (idle["active_job"], idle["active_job_state"]) == (None, None)


def test_a_running_jobs_rate_elapsed_and_time_left_come_from_its_progress() -> None:
    started = datetime(2026, 11, 29, 13, 0, tzinfo=UTC)
    now = started + timedelta(seconds=20)
    progress = {
        "os": {"operation": "backup", "done": 3 << 30, "total": 4 << 30, "read": 1 << 30},
        "data": {"operation": "backup", "done": 1 << 30, "total": 4 << 30, "read": 1 << 30},
    }
    job = Job(state="running", started_at=started, progress=progress, bytes_read=0)
    live = live_figures(job, 4 << 30, 8 << 30, now)
    # 2 GiB read in 20 s (not the 4 GiB of the disks' sizes passed over, holes included);
    # half done in 20 s: 20 s left
    assert live == {"elapsed": 20.0, "read": 2 << 30, "rate": (2 << 30) / 20, "eta": 20.0}
    ended = Job(state="succeeded", started_at=started, finished_at=now, bytes_read=5 << 30)
    assert live_figures(ended, 8 << 30, 8 << 30, now)["rate"] == (5 << 30) / 20
    assert live_figures(Job(state="queued"), 0, 0, now)["elapsed"] is None
