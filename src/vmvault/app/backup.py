"""Backing up disk images as they are (``run_backup``), and the recording of a backup's
result that VM backups (``app.vm_backup``) share. Kept apart from the VM path so that
``vmvault backup IMAGE`` does not load the inventory, snapshot and quiescing code."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec, open_disk
from vmvault.app.records import JobRecorder, recorded_job, report_lost_packs
from vmvault.engine.backup import backup
from vmvault.engine.budgets import disk_budget
from vmvault.engine.progress import ProgressCallback, no_progress
from vmvault.model.point import RecoveryPoint
from vmvault.vault.vault import Vault


def run_backup(
    ctx: Context,
    vm: str,
    disks: Sequence[DiskSpec],
    *,
    full: bool = False,
    workers: int | None = None,
    rate_limit: float | None = None,
    progress: ProgressCallback = no_progress,
) -> RecoveryPoint:
    """Back up disk images of ``vm`` as they are into one point; returns the committed point.

    ``rate_limit`` (bytes/s) caps each disk, through the same budgets the inventory's
    limits use.
    """
    if rate_limit:
        disks = [replace(d, budget=disk_budget(rate_limit / 1e6)) for d in disks]
    with ctx.session("backup") as vault, recorded_job(ctx, vault, "backup", vm) as job:
        return backup_and_record(
            vault, job, vm, disks, full=full, workers=workers, progress=progress
        )


def backup_and_record(
    vault: Vault,
    job: JobRecorder,
    vm: str,
    disks: Sequence[DiskSpec],
    **options: Any,
) -> RecoveryPoint:
    with ExitStack() as stack:
        inputs = [open_disk(stack, spec) for spec in disks]
        result = backup(vault, vm, inputs, **options)
    point = result.point
    job.catalog().record_point(vault.config.vault_id, point)
    lost = report_lost_packs(job.catalog(), vault)
    totals = {
        "bytes_read": sum(s.read for s in result.stats.values()),
        "bytes_changed": sum(s.changed for s in result.stats.values()),
        "bytes_sent": sum(s.new for s in result.stats.values()),
        "bytes_written": sum(s.stored for s in result.stats.values()),
    }
    job.finish(
        vault,
        vm,
        "succeeded",
        point_id=point["id"],
        counters=totals,
        details={
            "consistency": point["consistency"],
            **point.get("meta", {}),
            **({"missing_packs": lost} if lost else {}),
        },
    )
    return point
