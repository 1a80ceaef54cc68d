"""`vmvault jobs` (the queue and its history) and `vmvault worker` (runs queued jobs)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import typer

from vmvault.cli.client import get_client
from vmvault.cli.options import (
    BrokerOpt,
    CatalogOpt,
    InventoryOpt,
    JobIdArg,
    JsonOpt,
    MaintenanceAtOpt,
    PassFileOpt,
    VaultOpt,
    broker_option,
    context,
    full_option,
    maintenance_time,
    once_option,
    vm_option,
)
from vmvault.cli.output import daemon_logging, emit_json, guarded, show
from vmvault.cli.render.jobs import (
    print_cancelled,
    print_job,
    print_jobs,
    print_queued,
    print_worker_ran,
)
from vmvault.errors import UsageError
from vmvault.inventory import DEFAULT_INVENTORY, InventoryFile, load_inventory
from vmvault.model.jobs import JobState

app = typer.Typer(help="The job queue and history.", no_args_is_help=True)
log = logging.getLogger("vmvault.scheduler")


@app.command("list")
def list_jobs(
    limit: int = typer.Option(20, "--limit", min=1, max=500),
    state: JobState | None = typer.Option(None, "--state", help="Only jobs in this state."),
    vm: str | None = vm_option("Only this VM's jobs."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Queued, running and finished jobs, newest first (`jobs show ID`: one in full)."""
    client = get_client(vault, catalog, passphrase_file)
    wanted = state.value if state else None
    jobs = guarded(json, lambda: client.list_jobs(limit, wanted, vm))
    if json:
        emit_json({"jobs": jobs})
    else:
        print_jobs(jobs, filters={"state": wanted, "vm": vm})


@app.command("show")
def show_job(
    job_id: int = JobIdArg,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """One job in full."""
    client = get_client(vault, catalog, passphrase_file)
    show(guarded(json, lambda: client.show_job(job_id)), json, print_job)


@app.command("cancel")
def cancel_job(
    job_id: int = JobIdArg,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Cancel a queued job, or stop a running one at its next block."""
    client = get_client(vault, catalog, passphrase_file)
    state = guarded(json, lambda: client.cancel_job(job_id))
    show({"id": job_id, "state": state}, json, print_cancelled)


@app.command("run-now")
def run_now(
    vm: str = typer.Argument(..., help="VM to back up."),
    full: bool = full_option(None),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Queue an on-demand backup of a VM (a worker runs it)."""
    client = get_client(vault, catalog, passphrase_file)
    job_id = guarded(json, lambda: client.run_now(vm, full, inventory))
    if json:
        emit_json({"id": job_id, "state": "queued"})
    else:
        print_queued(job_id, vm)


def worker(
    once: bool = once_option("Stop when the queue is empty."),
    concurrency: int | None = typer.Option(None, "--concurrency", min=1, help="Jobs at once."),
    broker: str | None = broker_option(
        "A fleet's worker: take the jobs of --host's queue and the shared one from this "
        "Redis (redis://HOST:PORT/DB; env VMVAULT_BROKER), within the fleet's limits."
    ),
    host: str | None = typer.Option(
        None,
        "--host",
        help="With --broker: the hypervisor this worker runs on (default: localhost, the "
        "inventory's default host); it runs the backups and restores of that host's VMs, "
        "and verify, replicate, maintenance.",
    ),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Run queued jobs within the inventory's limits (40 VMs, 20 disks per pool)."""
    if broker:
        where = host or "localhost"
        _fleet_worker(broker, where, once, concurrency, inventory, vault, catalog, passphrase_file)
        return
    if host is not None:
        guarded(json, lambda: _refuse("--host names a fleet worker's host: it needs --broker"))
    from vmvault.jobs.worker import run_worker  # SQLAlchemy, slow: the worker alone

    started = guarded(
        json,
        lambda: run_worker(
            context(vault, catalog, passphrase_file),
            load_inventory(inventory),
            concurrency=concurrency,
            once=once,
        ),
    )
    if json:
        emit_json({"jobs_run": started})
    else:
        print_worker_ran(started)


def _refuse(message: str) -> None:
    raise UsageError(message)


def _fleet_worker(
    broker: str,
    host: str,
    once: bool,
    concurrency: int | None,
    inventory: str | None,
    vault: str | None,
    catalog: str | None,
    passphrase_file: str | None,
) -> None:
    """A fleet's worker: a Celery worker on ``host``'s queue and the shared one."""
    daemon_logging()

    def act() -> None:
        if once:
            raise UsageError("--once runs the catalog's queue here: not with --broker")
        # Celery and redis: loaded only for a fleet
        from vmvault.cluster.settings import FleetSettings
        from vmvault.cluster.worker import run_fleet_worker

        settings = FleetSettings.from_env(broker)
        watched = InventoryFile(inventory or DEFAULT_INVENTORY)
        watched()  # a broken inventory stops it now
        ctx = context(vault, catalog, passphrase_file)
        run_fleet_worker(ctx, watched, settings, host=host, concurrency=concurrency)

    guarded(False, act)


def scheduler(
    interval: float = typer.Option(30.0, "--interval", help="Seconds between checks."),
    maintenance_at: str = MaintenanceAtOpt,
    once: bool = once_option("One check, run what is due, stop."),
    broker: str | None = BrokerOpt,
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
) -> None:
    """Run backups when their policies say, retention and GC daily; logs what it does."""
    # SQLAlchemy and the alert senders, slow to import: loaded when the scheduler starts.
    from vmvault.jobs.daemon import Daemon
    from vmvault.jobs.queue import JobQueue
    from vmvault.jobs.startup import startup_summary

    daemon_logging()

    def act() -> None:
        at = maintenance_time(maintenance_at)
        ctx = context(vault, catalog, passphrase_file)
        opened = ctx.open_vault(load_index=False)
        watched = InventoryFile(inventory or DEFAULT_INVENTORY)
        watched()  # a broken inventory stops it now, not at the first tick
        fleet, queue = None, JobQueue(ctx.catalog(), opened.config.vault_id)
        if broker:  # Celery: loaded only for a fleet
            from vmvault.cluster.broker import fleet_queue
            from vmvault.cluster.settings import FleetSettings

            fleet = FleetSettings.from_env(broker)
            queue = fleet_queue(ctx.catalog(), opened.config.vault_id, fleet, watched)
        daemon = Daemon(
            ctx, opened, queue, watched, tick_seconds=interval, maintenance_time=at, fleet=fleet
        )
        summary = startup_summary(
            ctx.catalog(),
            ctx.vault_path,
            opened,
            watched(),
            now=datetime.now(UTC),
            maintenance_time=at,
            interval=interval,
        )
        for line in summary:
            log.info("%s", line)
        if once:
            daemon.run_once()
            return
        try:
            daemon.run()
        except KeyboardInterrupt:  # SIGTERM or Ctrl-C: a stop asked for, not a failure
            # Daemon.run let its running jobs end or hand themselves back to the queue.
            log.info("scheduler stopped; jobs it ran are finished or queued again")

    guarded(False, act)
