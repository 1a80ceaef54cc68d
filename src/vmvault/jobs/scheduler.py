"""The scheduler: queue each VM's backups when its policy says, then let workers run them.

A VM's backups start when its timetable says (its policy's schedule, delayed to the VM's own
``start`` if it has one; the planner asks the same timetable). Each VM with a policy has a
"last due" time: the due time of its newest scheduled job, or,
before its first one, the moment the scheduler first saw it. Every tick, ``missed_runs``
of the policy gives at most one owed start since then — after downtime that is one job for
all the missed windows, not a burst. Retention (prune) and garbage collection run once a day
at ``maintenance_time`` (UTC), as jobs of their own, after the backups have been queued.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as clock_time

from sqlalchemy import select

from vmvault import service
from vmvault.catalog.models import Job
from vmvault.inventory import Inventory
from vmvault.jobs.queue import JobQueue
from vmvault.vault.vault import Vault

log = logging.getLogger("vmvault.scheduler")


@dataclass
class SchedulerState:
    """What a running scheduler remembers between ticks (the rest is in the catalog)."""

    first_seen: dict[str, datetime] = field(default_factory=dict)
    maintenance_done: set[str] = field(default_factory=set)  # dates (UTC) already done


def _last_due(queue: JobQueue, vm: str) -> datetime | None:
    with queue.catalog.session() as s:
        query = (
            select(Job)
            .where(Job.vault_id == queue.vault_id, Job.vm == vm, Job.kind == "backup")
            .order_by(Job.id.desc())
        )
        for job in s.scalars(query):
            due = (job.spec or {}).get("due")
            if due:
                return datetime.fromisoformat(due)
    return None


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
    from vmvault.protection import state_of

    queued = []
    for vm in inventory.vms:
        timetable = inventory.timetable(vm)
        if timetable is None:
            continue
        if vault is not None and state_of(vault, vm.name).status != "protected":
            continue  # protection stopped: no new backups
        last = _last_due(queue, vm.name) or state.first_seen.setdefault(vm.name, now)
        due = timetable.missed_runs(last, now)
        if due is not None:
            job_id = queue.enqueue(
                "backup", vm.name, {"scheduled": True, "due": due.isoformat()}, now=now
            )
            log.info("queued job %d: backup of %s due %s", job_id, vm.name, due.isoformat())
            queued.append(job_id)
    today = now.date().isoformat()
    if now.time() >= maintenance_time and today not in state.maintenance_done:
        state.maintenance_done.add(today)
        job_id = queue.enqueue("maintenance", "", {"due": now.isoformat()}, now=now)
        log.info("queued job %d: retention and garbage collection", job_id)
        queued.append(job_id)
    return queued


def run_maintenance(
    ctx: service.Context, inventory: Inventory, queue: JobQueue, job_id: int
) -> None:
    """Apply every VM's retention, then collect garbage (it defers while backups run)."""
    from vmvault.protection import purge_due

    vault = ctx.open_vault(load_index=False)
    vms = sorted({p["vm"] for p in vault.points()})
    purged = purge_due(vault, vms)
    for name, count in purged.items():
        log.info("purged %s: soft delete ended, %d point(s) deleted", name, count)
        service.raise_alert(
            ctx,
            vault,
            "purge_done",
            f"soft-deleted backup data of {name} was purged: {count} point(s) are gone",
            vm=name,
            details={"points": count},
        )
    _alert_upcoming_purges(ctx, vault, vms)
    from vmvault.snapshot import instant

    # Prune first: it is where an immutable vault refuses a shorter retention, and
    # instant_restore_days is part of it, so nothing may expire before it agreed.
    pruned = service.run_prune(ctx, inventory)
    now = datetime.now(UTC)
    for vm in inventory.vms:
        if vm.policy:
            days = inventory.policy(vm.policy).retention.instant_restore_days or 0
            instant.expire([d.path for d in vm.disks], days, now)
    report = service.run_gc(ctx)
    deleted = sum(len(v["prune"]) for v in pruned["vms"].values())
    log.info(
        "retention deleted %d point(s); gc freed %d bytes%s",
        deleted,
        report.bytes_freed,
        f" ({report.deferred})" if report.deferred else "",
    )
    queue.finish(
        job_id, "succeeded", details={"purged": purged, "pruned": deleted, "gc": report.to_dict()}
    )


def _alert_upcoming_purges(ctx: service.Context, vault: Vault, vms: list[str]) -> None:
    """Azure's "upcoming purge" alert: once per VM and purge date, in its last 2 days."""
    from vmvault.policy import upcoming_purge_alert
    from vmvault.protection import state_of

    now = datetime.now(UTC)
    for name in vms:
        state = state_of(vault, name)
        if state.purge_at is not None and upcoming_purge_alert(state, now):
            service.raise_alert(
                ctx,
                vault,
                "purge_upcoming",
                f"soft-deleted backup data of {name} will be purged at "
                f"{state.purge_at.isoformat()}; undelete it before then to keep it",
                vm=name,
                details={"purge_at": state.purge_at.isoformat()},
                dedupe_key=f"purge_upcoming:{vault.config.vault_id}:{name}:{state.purge_at}",
            )


def serve(
    ctx: service.Context,
    inventory: Inventory,
    *,
    interval: float = 30.0,
    maintenance_time: clock_time = clock_time(12, 0),
    once: bool = False,
) -> None:
    """Tick every ``interval`` seconds and run what is queued (one process does it all)."""
    from vmvault.alerts.deliver import deliver_pending
    from vmvault.jobs.worker import run_worker

    vault = ctx.open_vault(load_index=False)
    queue = JobQueue(ctx.catalog(), vault.config.vault_id)
    state = SchedulerState()
    while True:
        tick(
            queue,
            inventory,
            state,
            datetime.now(UTC),
            vault=vault,
            maintenance_time=maintenance_time,
        )
        run_worker(ctx, inventory, once=True)
        deliver_pending(queue.catalog, vault.config.vault_id, inventory.alerts)
        if once:
            return
        time.sleep(interval)
