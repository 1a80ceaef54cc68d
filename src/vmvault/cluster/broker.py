"""The Celery side of a fleet: the app, where each job's message goes, and the sending.

The catalog's job row is the record (state, progress, history); a message only carries a
job id to a queue: ``vmvault.host.<host>`` for a VM's backup or restore (the inventory
VM's ``host``: the worker beside its disks), ``vmvault.any`` for the rest (verify,
replicate, maintenance). Messages are acknowledged late and given back when a worker is
lost, and a duplicate is harmless: the task claims the row with the queue's conditional
update, so a job runs once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from celery import Celery

from vmvault.catalog.store import Catalog
from vmvault.cluster.settings import ANY_QUEUE, TASK, FleetSettings, host_queue
from vmvault.errors import VmvaultError
from vmvault.inventory import Inventory
from vmvault.jobs.queue import JobQueue
from vmvault.model.jobs import JobKind

log = logging.getLogger("vmvault.cluster")
_ON_HOST = {JobKind.BACKUP.value, JobKind.RESTORE.value}


def make_app(settings: FleetSettings) -> Celery:
    app = Celery("vmvault", broker=settings.broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # acknowledged when the job has ended, not when it starts
        task_reject_on_worker_lost=True,  # a lost worker's message goes back to the queue
        worker_prefetch_multiplier=1,  # a worker reserves no more than it can run
        task_default_queue=ANY_QUEUE,
        task_ignore_result=True,  # the catalog is the record
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def queue_for(inventory: Inventory, kind: str, vm: str) -> str:
    """The queue of a job: its VM's host for backups and restores, else any worker's."""
    if kind in _ON_HOST and vm:
        try:
            return host_queue(inventory.vm(vm).host)
        except VmvaultError:
            pass  # a VM gone from the inventory: any worker fails it with the reason
    return ANY_QUEUE


class Dispatcher:
    """The queue's ``dispatch``: a message naming the job, to the queue of its host."""

    def __init__(self, app: Celery, inventory: Callable[[], Inventory]) -> None:
        self.app, self.inventory = app, inventory

    def __call__(self, job_id: int, kind: str, vm: str, delay: float) -> None:
        queue = queue_for(self.inventory(), kind, vm)
        try:
            self.app.send_task(
                TASK, args=[job_id], queue=queue, countdown=delay if delay > 0 else None
            )
        except Exception as exc:  # the broker is down: the sweep sends it again
            log.error("error: job %d could not be sent to %s (%s)", job_id, queue, exc)
            return
        log.info("sent job %d (%s %s) to %s", job_id, kind, vm, queue)


def fleet_queue(
    catalog: Catalog,
    vault_id: str,
    settings: FleetSettings,
    inventory: Callable[[], Inventory],
    app: Celery | None = None,
) -> JobQueue:
    """A job queue whose queued jobs are sent to the fleet's workers."""
    dispatch = Dispatcher(app or make_app(settings), inventory)
    return JobQueue(catalog, vault_id, dispatch=dispatch, **settings.queue_timings())


class Sweeper:
    """Sends again the due jobs still queued ``resend_after`` after their last sending (a
    message lost with a broker restarted without its data, or a send that failed), unless
    a worker's task waits for the job's place in the admission (``waiting``). A duplicate
    is a no-op, so this errs on the side of sending."""

    def __init__(
        self,
        queue: JobQueue,
        settings: FleetSettings,
        waiting: Callable[[int], bool] = lambda job_id: False,
    ) -> None:
        self.queue, self.every, self.waiting = queue, settings.resend_after, waiting
        self._sent: dict[int, float] = {}

    def __call__(self, now: float | None = None) -> list[int]:
        now = time.monotonic() if now is None else now
        due = self.queue.queued(datetime.now(UTC))
        self._sent = {j.id: self._sent.get(j.id, now) for j in due}  # forget the rest
        again = []
        for job in due:
            if now - self._sent[job.id] < self.every:
                continue
            self._sent[job.id] = now
            if not self.waiting(job.id):  # a task waiting for its turn holds its message
                self.queue.send(job)
                again.append(job.id)
        return again
