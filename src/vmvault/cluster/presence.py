"""Which hosts of a fleet have a live worker, and an alert for the jobs of a host with none.

Without a worker consuming a host's queue its VMs' backups would wait there silently: the
messages sit in Redis, the jobs stay ``queued`` in the catalog, and nothing fails. Each
worker announces itself in Redis (a sorted set per vault: member ``host<TAB>worker``, score
the time it stops counting unless renewed, so a killed worker drops out on its own); the
process that sends the jobs (``vmvault scheduler`` or ``serve`` with ``--broker``) looks
at the due jobs and raises one ``host_without_worker`` alert per host and episode when a
job has waited ``no_worker_after`` with no live worker to take it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from vmvault.alerts.store import raise_alert
from vmvault.catalog.models import Job
from vmvault.cluster.broker import queue_for
from vmvault.cluster.settings import ANY_QUEUE, host_queue
from vmvault.inventory import Inventory
from vmvault.jobs.queue import JobQueue

log = logging.getLogger("vmvault.cluster")
ANY_HOST = "*"  # the shared queue's jobs: any live worker will do


class WorkerPresence:
    """The fleet's live workers, per host, in the broker's Redis."""

    def __init__(self, client: redis.Redis, vault_id: str) -> None:
        self.client = client
        self.key = f"vmvault:{vault_id}:workers"

    def announce(self, host: str, worker: str, ttl: float, now: float | None = None) -> None:
        """``worker`` serves ``host``'s queue for the next ``ttl`` seconds (renewed by it)."""
        now = time.time() if now is None else now
        self.client.zadd(self.key, {f"{host}\t{worker}": now + ttl})

    def withdraw(self, host: str, worker: str) -> None:
        self.client.zrem(self.key, f"{host}\t{worker}")

    def live(self, now: float | None = None) -> dict[str, list[str]]:
        """Host -> its live workers (expired entries are removed on the way)."""
        now = time.time() if now is None else now
        self.client.zremrangebyscore(self.key, "-inf", now)
        hosts: dict[str, list[str]] = {}
        for raw in self.client.zrange(self.key, 0, -1):
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            host, _, worker = member.partition("\t")
            hosts.setdefault(host, []).append(worker)
        return hosts


@dataclass
class HostWatch:
    """Alerts on due jobs no live worker can take: their host's queue has no consumer (or,
    for the shared queue, the fleet has no worker at all)."""

    queue: JobQueue
    presence: WorkerPresence
    inventory: Callable[[], Inventory]
    after: float  # seconds a job may wait without a worker before the alert
    _told: dict[str, int] = field(default_factory=dict)  # host -> oldest job alerted

    def __call__(self, now: datetime | None = None) -> list[str]:
        """The hosts alerted this time (one alert per host until a worker comes back)."""
        now = now or datetime.now(UTC)
        live = self.presence.live(now.timestamp())
        inventory = self.inventory()
        stranded: dict[str, list[Job]] = {}
        for job in self.queue.queued(now):
            queue = queue_for(inventory, job.kind, job.vm or "")
            host = ANY_HOST if queue == ANY_QUEUE else queue.removeprefix(host_queue(""))
            if live if host == ANY_HOST else host in live:
                continue
            if (now - _due_since(job)).total_seconds() >= self.after:
                stranded.setdefault(host, []).append(job)
        for host in list(self._told):
            if host not in stranded:  # a worker came back, or the jobs went
                del self._told[host]
        alerted = []
        for host, jobs in sorted(stranded.items()):
            if host in self._told:
                continue
            oldest = min(jobs, key=_due_since)
            self._told[host] = oldest.id
            waited = int((now - _due_since(oldest)).total_seconds())
            what = f"{oldest.kind} of {oldest.vm}" if oldest.vm else oldest.kind
            if host == ANY_HOST:
                where, fix = "the fleet", "start `vmvault worker --broker ...` on any host"
            else:
                where, fix = f"host {host}", f"start `vmvault worker --host {host} --broker ...`"
            message = (
                f"{where} has no worker: {len(jobs)} job(s) waiting, the oldest "
                f"(job {oldest.id}, {what}) for {waited} s; {fix}"
            )
            raised = raise_alert(
                self.queue.catalog,
                self.queue.vault_id,
                "host_without_worker",
                message,
                details={"host": host, "jobs": [j.id for j in jobs]},
                # Once per host and stranded job, whoever watches (a scheduler and a
                # server may share the catalog) and however often a worker comes and goes.
                dedupe_key=f"host_without_worker:{host}:{oldest.id}",
            )
            if raised is not None:
                log.warning("warning: %s", message)
                alerted.append(host)
        return alerted


def _due_since(job: Job) -> datetime:
    """Since when the job could have run: queued (or due, if later)."""
    since = job.queued_at or job.created_at
    return max(since, job.not_before) if job.not_before else since
