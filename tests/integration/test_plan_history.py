"""The planner against real backups made by the engine: once a VM has history, its estimates
use what its backups measured, and they predict the next backup of the same kind."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vmvault import testdisk
from vmvault.app.context import Context
from vmvault.app.vm_backup import run_vm_backup
from vmvault.inventory import load_inventory
from vmvault.planning.runner import run_plan

MiB = 1 << 20
DAY = datetime(2026, 12, 1, tzinfo=UTC)


def _last_job(ctx: Context) -> tuple[float, float, Any]:
    """The newest backup's wall time and its disk's bytes read and seconds (from the catalog)."""
    catalog = ctx.catalog()
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    job = catalog.jobs(vault_id, limit=1)[0]
    [disk] = next(p for p in catalog.points(vault_id) if p.id == job.point_id).disks
    assert job.state == "succeeded" and job.bytes_read == disk.read
    assert job.finished_at is not None and job.started_at is not None
    return (job.finished_at - job.started_at).total_seconds(), disk.read / disk.seconds, disk


def test_estimates_use_measured_throughput_and_predict_the_next_backup(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    disk = make_image("web.img", size=128 * MiB)
    path = tmp_path / "inv.toml"
    path.write_text(f"""
[limits]
disk_mb_per_s = 10000   # no cap: the engine's own speed is measured
[pools.local]
egress_mb_per_s = 10000
[policies.night]
schedule = {{ kind = "daily", time = "22:00" }}
[[vms]]
name = "web"
policy = "night"
  [[vms.disks]]
  name = "os"
  path = "{disk}"
  role = "os"
  pool = "local"
""")
    inventory = load_inventory(path)
    before = run_plan(ctx, inventory, DAY)["estimates"]["web"]
    assert before["tonight"] == "initial" and before["data_source"] == "host"
    assert before["initial"]["rate_source"] == "Azure's rates"
    assert before["initial"]["rate_mb_s"] == 20.0  # 160 Mbps
    assert before["incremental"]["changed_source"] == "daily change 5%"
    seed_total = before["initial"]["total_s"]  # 160 Mbps and the default 60 s snapshot

    run_vm_backup(ctx, inventory, "web")  # the first backup: full
    wall, rate, first = _last_job(ctx)
    estimate = run_plan(ctx, inventory, DAY)["estimates"]["web"]
    assert estimate["tonight"] == "incremental" and estimate["data_source"] == "last backup"
    initial = estimate["initial"]
    assert initial["rate_source"] == "measured (1 backup)"
    assert initial["rate_mb_s"] == round(rate / 1e6, 2)  # that job's bytes read over seconds
    assert initial["transfer_s"] == pytest.approx(first.seconds, abs=0.002)
    assert initial["snapshot_source"] == "measured (1 backup)"
    assert initial["total_s"] == pytest.approx(wall, abs=0.002)  # the whole job it measured
    assert seed_total > 10 * wall  # what the seed's table would have said
    # no incremental yet: the seed's model for that kind, but the snapshot time measured
    assert estimate["incremental"]["rate_source"] == "Azure's rates"
    assert estimate["incremental"]["snapshot_source"] == "measured (1 backup, initial)"
    assert estimate["incremental"]["snapshot_s"] == initial["snapshot_s"]

    testdisk.mutate_disk(disk, 3, seed=2, jobs=1)
    run_vm_backup(ctx, inventory, "web")  # incremental: reads it all, stores changes
    _, rate, second = _last_job(ctx)
    incremental = run_plan(ctx, inventory, DAY)["estimates"]["web"]["incremental"]
    assert incremental["rate_source"] == incremental["changed_source"] == "measured (1 backup)"
    assert incremental["rate_mb_s"] == round(rate / 1e6, 2)
    assert incremental["changed_bytes"] == second.changed
    # predicts the next incremental, a day of writes later
    testdisk.mutate_disk(disk, 3, seed=3, jobs=1)
    run_vm_backup(ctx, inventory, "web")
    wall, _, _ = _last_job(ctx)
    # within a generous factor: the machine is shared, and these backups take a fraction of a
    # second (the seed's table would be off by a factor of hundreds)
    assert 0.2 < incremental["total_s"] / wall < 5, (incremental, wall)
