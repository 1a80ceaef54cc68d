"""Restoring and verifying one disk of a point (``run_restore``, ``run_verify``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vmvault.app.context import Context
from vmvault.app.point_ref import resolve_point
from vmvault.app.records import recorded_job, report_damaged_points
from vmvault.engine.budgets import DiskBudget
from vmvault.engine.progress import ProgressCallback, ProgressEvent, no_progress
from vmvault.engine.restore import (
    RestoreReport,
    merge_damage,
    point_disk,
    restore_disk,
    verify_point,
)
from vmvault.engine.targets import check_target, restore_target
from vmvault.errors import CorruptObject, DamageFound, ObjectMissing
from vmvault.model.point import RecoveryPoint
from vmvault.model.verify import VerifyOutcome
from vmvault.snapshot import instant
from vmvault.snapshot.base import SnapshotError
from vmvault.snapshot.providers import sparse_copy
from vmvault.vault.vault import Vault


def run_restore(
    ctx: Context,
    point_ref: str,
    target: str,
    *,
    disk: str | None = None,
    vm: str | None = None,
    target_format: str = "raw",
    ignore_errors: bool = False,
    workers: int | None = None,
    sync: bool = False,
    force: bool = False,
    new_file: bool = False,
    budget: DiskBudget | None = None,
    progress: ProgressCallback = no_progress,
    record: bool = True,
) -> RestoreReport:
    """Restore one disk of a point; ``budget`` makes it take its share of a pool's budget.

    ``record=False`` leaves the job history to the caller (a VM restore is one job).
    ``new_file``: vmvault chose the target's name, so even a device found there is refused
    (see ``targets.restore_target``).

    A point whose snapshot is still kept for instant restore is copied from it (and checked
    against the point's chunk ids) instead of being read from the vault.
    """
    with ctx.session("restore") as vault:
        point_id = resolve_point(vault, point_ref, vm)
        point = vault.get_point(point_id)
        vm_name = point["vm"]
        # A target refused as it stands (a name taken without force, no such folder) is
        # refused before a job is recorded: nothing ran, a failed job would say otherwise.
        # The restore checks again as it writes (the folder may change meanwhile).
        check_target(Path(target), force=force, new_file=new_file)
        if target_format == "raw" and not ignore_errors:
            report = _instant_restore(
                vault, point, disk, Path(target), force=force, new_file=new_file
            )
            if report is not None:  # one event: the copy is not read block by block
                size = report.size
                progress(ProgressEvent("restore", report.disk, size, size, report.bytes_verified))
                return report.of(point_id, vm_name)
        options: dict[str, Any] = {
            "disk": disk,
            "target_format": target_format,
            "ignore_errors": ignore_errors,
            "workers": workers,
            "sync": sync,
            "force": force,
            "new_file": new_file,
            "byte_buckets": budget.byte_buckets if budget else (),
            "progress": progress,
        }
        if not record:
            return restore_disk(vault, point_id, target, **options).of(point_id, vm_name)
        report = _restore_recorded(ctx, vault, point_id, vm_name, target, **options)
        return report.of(point_id, vm_name)


def _instant_restore(
    vault: Vault,
    point: RecoveryPoint,
    disk: str | None,
    target: Path,
    *,
    force: bool,
    new_file: bool,
) -> RestoreReport | None:

    entry = point_disk(vault, point, disk)
    image = instant.find(point, entry["name"])
    if image is None or entry.get("format", "raw") != "raw":
        return None
    started = time.perf_counter()
    manifest = vault.get_manifest(entry["manifest"])
    with restore_target(target, force=force, new_file=new_file) as prepared:
        if prepared.is_device:
            prepared.abandon()
            return None  # a device gets its explicit zeros from the vault's restore
        copy = Path(prepared.path)
        try:
            sparse_copy(image, copy)
        except SnapshotError:
            # The kept copy cannot be read, or the target cannot take it (full): the vault's
            # restore decides, and names a failure of the target as such (target_error).
            prepared.abandon()
            return None
        if not instant.matches(vault, manifest, copy):
            prepared.abandon()
            return None  # the kept copy changed: the vault decides
    return RestoreReport(
        entry["name"],
        manifest.size,
        bytes_verified=manifest.size,
        bytes_written=manifest.size,
        seconds=time.perf_counter() - started,
        source="instant",
    )


def _restore_recorded(
    ctx: Context, vault: Vault, point_id: str, vm_name: str, target: str, **options: Any
) -> RestoreReport:
    with recorded_job(ctx, vault, "restore", vm_name) as job:
        report = restore_disk(vault, point_id, target, **options)
        state = "partially_succeeded" if report.damaged else "succeeded"
        job.finish(
            vault,
            vm_name,
            state,
            point_id=point_id,
            counters={"bytes_read": report.bytes_verified, "bytes_written": report.bytes_written},
            details=report.to_dict(),
        )
    return report


def run_verify(
    ctx: Context,
    point_ref: str,
    *,
    vm: str | None = None,
    progress: ProgressCallback = no_progress,
    job_id: int | None = None,
) -> tuple[str, list[RestoreReport]]:
    """Verify a point and record the outcome in the catalog (its "last verified"); damage
    found raises a ``point_damaged`` alert. ``job_id``: the queued job that runs it."""
    with ctx.session("verify") as vault:
        point_id = resolve_point(vault, point_ref, vm)
        started = time.perf_counter()
        vm_name = ""
        try:
            vm_name = vault.get_point(point_id)["vm"]
            reports = verify_point(vault, point_id, progress=progress)
        except (CorruptObject, ObjectMissing) as exc:  # the point or a manifest: all lost
            seconds = time.perf_counter() - started
            lost = VerifyOutcome(point_id, vm_name, 1, exc.message, 0, seconds)
            _record_verify(ctx, vault, lost, job_id, exc.message)
            raise DamageFound(f"recovery point {point_id} is damaged: {exc.message}") from None
        damage = [(r.disk, d) for r in reports for d in merge_damage(r.damaged)]
        first = None
        if damage:
            disk, d = damage[0]
            first = f"{disk} bytes {d.start}-{d.end}: {d.reason}"
        outcome = VerifyOutcome(
            point_id,
            vm_name,
            len(damage),
            first,
            sum(r.bytes_verified for r in reports),
            time.perf_counter() - started,
        )
        found = f"{len(damage)} damaged range(s), first {first}"
        _record_verify(ctx, vault, outcome, job_id, found)
        return point_id, reports


def _record_verify(
    ctx: Context, vault: Vault, outcome: VerifyOutcome, job_id: int | None, damage: str
) -> None:
    """The outcome in the catalog; ``damage`` (what was found) in an alert if not ok."""
    # SQLAlchemy is imported here, not at the CLI's start (see records.store_alert).
    from vmvault.catalog.verifications import record_verify

    catalog = ctx.catalog()
    record_verify(catalog, vault.config.vault_id, outcome, job_id=job_id)
    if not outcome.ok:
        report_damaged_points(catalog, vault, {outcome.point_id: damage}, vm=outcome.vm or None)
