"""What each kind of queued job runs: one handler per ``JobKind``, each a use case whose
outcome lands on the job's row. A new kind of job is a new handler in ``HANDLERS``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmvault.app.context import Context
from vmvault.app.replication import copy_retention_inventory, run_replicate
from vmvault.app.restore import run_verify
from vmvault.app.retention import run_maintenance
from vmvault.app.vm_backup import run_vm_backup
from vmvault.app.vm_restore import run_vm_restore
from vmvault.catalog.models import Job
from vmvault.catalog.store import Catalog
from vmvault.engine.progress import ProgressCallback
from vmvault.errors import UsageError, VmvaultError
from vmvault.inventory import Inventory
from vmvault.jobs.queue import JobQueue
from vmvault.model.jobs import JobKind, JobState
from vmvault.recovery.drill import drill_settings, run_drill
from vmvault.vault.vault import Vault

log = logging.getLogger("vmvault")


@dataclass
class QueuedJob:
    """The recorder of a job that came from the queue: its row exists already."""

    queue: JobQueue
    job_id: int
    worker: str

    def catalog(self) -> Catalog:
        return self.queue.catalog

    def finish(self, vault: Vault, vm: str | None, state: str, **fields: Any) -> None:
        if not self.queue.owns(self.job_id, self.worker):
            abandoned(self.job_id, self.worker)
            return
        self.queue.finish(self.job_id, state, **fields)


@dataclass
class JobRun:
    """A claimed job and what its handler needs to run it."""

    ctx: Context
    inventory: Inventory
    queue: JobQueue
    job: Job
    progress: ProgressCallback

    @property
    def recorder(self) -> QueuedJob:
        return QueuedJob(self.queue, self.job.id, str(self.job.worker))

    @property
    def spec(self) -> dict[str, Any]:
        return self.job.spec or {}

    def finish(self, state: JobState, **fields: Any) -> None:
        """Record the outcome, if the job is still this worker's (see ``abandoned``)."""
        if not self.queue.owns(self.job.id, str(self.job.worker)):
            abandoned(self.job.id, str(self.job.worker))
            return
        self.queue.finish(self.job.id, state, **fields)


def _backup(run: JobRun) -> None:
    point = run_vm_backup(
        run.ctx,
        run.inventory,
        str(run.job.vm),
        full=bool(run.spec.get("full")),
        progress=run.progress,
        recorder=run.recorder,
    )
    if drill := drill_settings(run.inventory, str(run.job.vm)):
        # After the job's success is recorded: its outcome is the catalog's drill row and,
        # if it failed, an alert. The backup stands either way: an error here must not
        # reach the worker, which would fail (or retry) the succeeded job.
        try:
            run_drill(run.ctx, str(run.job.vm), point["id"], *drill)
        except Exception as exc:
            log.warning("warning: restore drill of %s could not run: %s", run.job.vm, exc)


def _restore(run: JobRun) -> None:
    spec = run.spec
    run_vm_restore(
        run.ctx,
        run.inventory,
        str(run.job.vm),
        point_ref=str(spec.get("point", "latest")),
        new_name=spec.get("new_name"),
        directory=spec.get("directory"),
        target_pool=spec.get("pool"),
        confine_to=spec.get("root"),
        in_place=bool(spec.get("in_place")),
        confirmed=bool(spec.get("in_place")),  # the API took the VM's name typed again
        disks=spec.get("disks"),
        disk_format=spec.get("format"),
        progress=run.progress,
        recorder=run.recorder,
    )


def _verify(run: JobRun) -> None:
    point_id, reports = run_verify(
        run.ctx,
        str(run.spec.get("point", "latest")),
        vm=run.job.vm or None,
        progress=run.progress,
        job_id=run.job.id,
    )
    damaged = sum(1 for r in reports if r.damaged)
    run.finish(
        JobState.FAILED if damaged else JobState.SUCCEEDED,
        point_id=point_id,
        error=("restore_damaged", f"{damaged} disk(s) damaged") if damaged else None,
        counters={"bytes_read": sum(r.bytes_verified for r in reports)},
        details={"disks": [r.to_dict() for r in reports]},
    )


def _maintenance(run: JobRun) -> None:
    run.finish(JobState.SUCCEEDED, details=run_maintenance(run.ctx, run.inventory))


def _replicate(run: JobRun) -> None:
    name = str(run.spec.get("copy", ""))
    copy = run.inventory.replication.get(name)
    if copy is None:
        raise UsageError(f"no replication named {name!r} in the inventory (removed since?)")
    run_replicate(
        run.ctx,
        copy.to,
        passphrase_file=copy.passphrase_file,
        keep=copy_retention_inventory(run.inventory, copy.policy),
        progress=run.progress,
        recorder=run.recorder,
    )


HANDLERS: dict[JobKind, Callable[[JobRun], None]] = {
    JobKind.BACKUP: _backup,
    JobKind.RESTORE: _restore,
    JobKind.VERIFY: _verify,
    JobKind.MAINTENANCE: _maintenance,
    JobKind.REPLICATE: _replicate,
}


def run_job(run: JobRun) -> None:
    """Run one claimed job by its kind; its use case records the outcome on the job's row."""
    try:
        handler = HANDLERS[JobKind(run.job.kind)]
    except ValueError:
        raise VmvaultError(f"unknown job kind {run.job.kind!r}") from None
    handler(run)


def abandoned(job_id: int, worker: str) -> None:
    # Reaped while this worker could not beat (a catalog outage, a stopped process): the
    # job was retried or failed meanwhile, and that decision stands.
    log.warning(
        "warning: job %d is no longer run by %s (it was reaped); its outcome here is dropped",
        job_id,
        worker,
    )
