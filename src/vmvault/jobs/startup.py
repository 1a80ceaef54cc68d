"""What a starting scheduler says it will do: the catalog and vault it works on, the VMs
and schedules it watches with each one's next run, and the next daily maintenance. Logged
once at start, so an operator sees at a glance that it watches what they meant."""

from __future__ import annotations

from datetime import datetime
from datetime import time as clock_time

from vmvault.catalog.store import Catalog
from vmvault.inventory import Inventory
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
        # past today's time: due now, unless another scheduler of the vault took it on
        + (f" (next {_utc(maintenance)})" if maintenance > now else " (today's is due)")
    )
    return lines


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
