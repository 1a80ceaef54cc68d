"""What a starting scheduler says it will do: the catalog and vault it works on, the VMs
and schedules it watches with each one's next run, and the next daily maintenance. Logged
once at start, so an operator sees at a glance that it watches what they meant."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import time as clock_time

from vmvault.catalog.claims import claimed_by
from vmvault.catalog.store import Catalog
from vmvault.inventory import Inventory
from vmvault.jobs.scheduler import MAINTENANCE
from vmvault.protection import state_of
from vmvault.vault.vault import Vault


def startup_summary(
    catalog: Catalog,
    vault_path: str,
    vault: Vault,
    inventory: Inventory,
    *,
    now: datetime,
    maintenance_time: clock_time,
    interval: float,
) -> list[str]:
    """Log lines, one per VM watched; ``now`` is aware UTC."""
    lines = [
        f"catalog {catalog.engine.url.render_as_string(hide_password=True)}",
        f"vault {vault.config.vault_id} at {vault_path}",
    ]
    runs: list[tuple[datetime, str]] = []
    for vm in inventory.vms:
        timetable = inventory.timetable(vm)
        if timetable is None:
            lines.append(f"VM {vm.name}: no policy, not scheduled")
            continue
        status = state_of(vault, vm.name).status
        if status != "protected":
            lines.append(f"VM {vm.name}: policy {vm.policy}, protection {status}: not scheduled")
            continue
        due = timetable.next_due(now)
        runs.append((due, vm.name))
        lines.append(f"VM {vm.name}: policy {vm.policy}, next run {_utc(due)}")
    maintenance = datetime.combine(now.date(), maintenance_time, now.tzinfo)
    first = min(runs, default=None)
    lines.append(
        f"watching {len(runs)} of {len(inventory.vms)} VM(s) every {interval:g} s; next run "
        + (f"{_utc(first[0])} ({first[1]})" if first else "none")
        + f"; daily maintenance at {maintenance_time:%H:%M} UTC"
        + _todays_maintenance(catalog, vault, now, maintenance)
    )
    return lines


def _todays_maintenance(catalog: Catalog, vault: Vault, now: datetime, at: datetime) -> str:
    if at > now:
        return f" (next {_utc(at)})"
    # past today's time: due now, unless a process sharing the catalog has taken it on
    taker = claimed_by(catalog, vault.config.vault_id, MAINTENANCE, now.date())
    if taker is None:
        return " (today's is due)"
    return f" (today's taken on by {taker}; next {_utc(at + timedelta(days=1))})"


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
