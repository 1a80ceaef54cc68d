"""The scheduler: queue each VM's backups when its policy says, then let workers run them.

A VM's backups start when its timetable says (its policy's schedule, delayed to the VM's own
``start`` if it has one; the planner asks the same timetable). Each VM with a policy has a
"last due" time: the due time of its newest scheduled job, or,
before its first one, the moment the scheduler first saw it. Every tick, ``missed_runs``
of the policy gives at most one owed start since then — after downtime that is one job for
all the missed windows, not a burst. Retention (prune) and garbage collection run once a day
at ``maintenance_time`` (UTC), as jobs of their own, after the backups have been queued;
once a day per vault, also when several schedulers share the catalog (a claim in it).

A policy with ``verify`` has its VMs' points verified: when no backup is queued or running,
each such VM without a verify queued or running gets one for its point most due (see
``policy.model.VerifySchedule``); a point whose verify was queued in the last
``VERIFY_RETRY_AFTER`` is left alone, so a verify that failed without an outcome (the store
out of reach) is tried again the next day, not at every tick.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as clock_time

from vmvault.catalog.backups import last_scheduled_due
from vmvault.catalog.claims import claim_daily, claimed_by
from vmvault.catalog.models import RecoveryPoint
from vmvault.catalog.replication import replication_queued_since
from vmvault.catalog.verifications import last_verified, verifies_queued_since
from vmvault.inventory import Inventory
from vmvault.jobs.queue import JobQueue
from vmvault.model.jobs import JobKind
from vmvault.protection import state_of
from vmvault.vault.vault import Vault

log = logging.getLogger("vmvault.scheduler")
MAINTENANCE = "maintenance"  # the daily task's name in the catalog's claims

VERIFY_RETRY_AFTER = timedelta(days=1)


@dataclass
class SchedulerState:
    """What a running scheduler remembers between ticks (the rest is in the catalog)."""

    first_seen: dict[str, datetime] = field(default_factory=dict)
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    maintenance_done: set[str] = field(default_factory=set)  # dates (UTC) already done
    replications_done: set[str] = field(default_factory=set)  # "copy@window opened"


def tick(
    queue: JobQueue,
    inventory: Inventory,
    state: SchedulerState,
    now: datetime,
    *,
    vault: Vault | None = None,
    maintenance_time: clock_time = clock_time(12, 0),
) -> list[int]:
    """Queue what is due at ``now``; returns the new job ids."""

    queued = []
    for vm in inventory.vms:
        timetable = inventory.timetable(vm)
        if timetable is None:
            continue
        if vault is not None and state_of(vault, vm.name).status != "protected":
            continue  # protection stopped: no new backups
        last = last_scheduled_due(
            queue.catalog, queue.vault_id, vm.name
        ) or state.first_seen.setdefault(vm.name, now)
        due = timetable.missed_runs(last, now)
        if due is not None:
            job_id = queue.enqueue(
                JobKind.BACKUP, vm.name, {"scheduled": True, "due": due.isoformat()}, now=now
            )
            log.info("queued job %d: backup of %s due %s", job_id, vm.name, due.isoformat())
            queued.append(job_id)
    queued += _replications(queue, inventory, state, now)
    queued += _verifies(queue, inventory, now)
    today = now.date().isoformat()
    if now.time() >= maintenance_time and today not in state.maintenance_done:
        state.maintenance_done.add(today)
        # One maintenance a day per vault, whichever scheduler sharing the catalog gets
        # there first (a CLI scheduler and a server each keep their own state).
        if claim_daily(queue.catalog, queue.vault_id, MAINTENANCE, now.date(), state.name):
            job_id = queue.enqueue(JobKind.MAINTENANCE, "", {"due": now.isoformat()}, now=now)
            log.info("queued job %d: retention and garbage collection", job_id)
            queued.append(job_id)
        else:
            taker = claimed_by(queue.catalog, queue.vault_id, MAINTENANCE, now.date())
            log.info("today's maintenance was already taken on by %s", taker)
    return queued


def _replications(
    queue: JobQueue, inventory: Inventory, state: SchedulerState, now: datetime
) -> list[int]:
    """Queue each copy's replication once per window, when no backup is queued or running
    (so the day's points go across the same night). A window that ends while backups still
    run is missed; the next one sends everything the copy lacks."""
    queued: list[int] = []
    for copy in inventory.replication.values():
        opened = copy.window_opened(now)
        if opened is None:
            continue
        window = f"{copy.name}@{opened.isoformat()}"
        if window in state.replications_done:
            continue
        if replication_queued_since(queue.catalog, queue.vault_id, copy.name, opened):
            state.replications_done.add(window)  # queued by another scheduler, or before
            continue
        if any(job.kind == JobKind.BACKUP for job in queue.queued(now) + queue.running()):
            continue  # after the backups
        state.replications_done.add(window)
        job_id = queue.enqueue(
            JobKind.REPLICATE, "", {"copy": copy.name, "due": opened.isoformat()}, now=now
        )
        log.info("queued job %d: replication to %s (%s)", job_id, copy.name, copy.to)
        queued.append(job_id)
    return queued


def _verifies(queue: JobQueue, inventory: Inventory, now: datetime) -> list[int]:
    """Queue a verify for each VM whose policy asks for them and that has a point due, one
    per VM at a time, after the backups."""
    wanted = {
        vm.name: verify
        for vm in inventory.vms
        if vm.policy is not None and (verify := inventory.policy(vm.policy).verify) is not None
    }
    if not wanted:
        return []
    active = queue.queued(now) + queue.running()
    if any(job.kind == JobKind.BACKUP for job in active):
        return []  # after the backups
    busy = {job.vm for job in active if job.kind == JobKind.VERIFY}
    catalog, vault_id = queue.catalog, queue.vault_id
    last = {pid: row.at for pid, row in last_verified(catalog, vault_id).items()}
    tried = verifies_queued_since(catalog, vault_id, now - VERIFY_RETRY_AFTER)
    due: dict[str, list[RecoveryPoint]] = {}
    for p in catalog.points(vault_id):
        verify = wanted.get(p.vm)
        if verify is None or p.vm in busy or p.id in tried:
            continue
        if verify.due(p.created_at, last.get(p.id), now):
            due.setdefault(p.vm, []).append(p)
    queued: list[int] = []
    for vm, points in due.items():
        # Never verified first, newest first; then the longest since its last verify.
        point = min(
            points, key=lambda p: (p.id in last, last.get(p.id, now), -p.created_at.timestamp())
        )
        spec = {"point": point.id, "scheduled": True, "due": now.isoformat()}
        job_id = queue.enqueue(JobKind.VERIFY, vm, spec, max_attempts=1, now=now)
        log.info("queued job %d: verify of %s's point %s", job_id, vm, point.id)
        queued.append(job_id)
    return queued
