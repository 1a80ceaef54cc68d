"""Reports from the vault's points, the catalog's jobs and the inventory: the summary of
"are we protected?" and the monthly report, and its files written by the daily maintenance."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmvault.errors import CorruptObject
from vmvault.model.point import RecoveryPoint
from vmvault.protection import state_of
from vmvault.reports.monthly import month_span, monthly_rows, previous_month, to_csv, to_pdf
from vmvault.reports.summary import summary

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog
    from vmvault.inventory import Inventory, Vm
    from vmvault.policy import Schedule
    from vmvault.vault.vault import Vault

log = logging.getLogger("vmvault.reports")
JOB_COLUMNS = ("kind", "vm", "state", "started_at", "finished_at")


def protection_states(inventory: Inventory, vault: Vault) -> dict[str, str]:
    """Each VM of the inventory's protection state in the vault (``protected``,
    ``stopped-retain``, ...), ``unknown`` where its record is damaged (`check` names it)."""

    def state(vm: str) -> str:
        try:
            return state_of(vault, vm).status
        except CorruptObject:
            return "unknown"

    return {vm.name: state(vm.name) for vm in inventory.vms}


def schedules(inventory: Inventory, states: Mapping[str, str]) -> dict[str, Schedule | None]:
    """Each VM of the inventory with its policy's schedule; None (not scheduled) without a
    policy, or where its protection is stopped (``states``: ``protection_states``; no
    backups are due). A damaged protection record keeps the schedule: it is still due."""

    def scheduled(vm: Vm) -> Schedule | None:
        if vm.policy is None or states.get(vm.name, "protected") not in ("protected", "unknown"):
            return None
        return inventory.policy(vm.policy).schedule

    return {vm.name: scheduled(vm) for vm in inventory.vms}


def job_rows(
    catalog: Catalog, vault_id: str, since: datetime, until: datetime | None = None
) -> list[dict[str, Any]]:
    """The jobs that finished in [since, until), as plain rows."""
    return [
        {c: getattr(j, c) for c in JOB_COLUMNS}
        for j in catalog.jobs_finished(vault_id, since, until)
    ]


def site_summary(
    inventory: Inventory,
    vault: Vault,
    points: Sequence[RecoveryPoint],
    catalog: Catalog,
    now: datetime,
) -> dict[str, Any]:
    """The summary over the last 30 days' jobs (the counts look back 7 days)."""
    jobs = job_rows(catalog, vault.config.vault_id, now - timedelta(days=30))
    return summary(schedules(inventory, protection_states(inventory, vault)), points, jobs, now)


def monthly_report(
    month: str,
    inventory: Inventory,
    points: Sequence[RecoveryPoint],
    catalog: Catalog,
    vault_id: str,
) -> list[dict[str, Any]]:
    start, end = month_span(month)
    jobs = job_rows(catalog, vault_id, start, end)
    return monthly_rows(month, [vm.name for vm in inventory.vms], points, jobs)


def write_monthly(
    directory: str,
    inventory: Inventory,
    points: Sequence[RecoveryPoint],
    catalog: Catalog,
    vault_id: str,
    now: datetime,
) -> list[str]:
    """Last month's report as ``vmvault-YYYY-MM.csv`` and ``.pdf`` in ``directory``, unless
    both are there already; each written atomically. Returns the files written."""
    month = previous_month(now)
    folder = Path(directory)
    targets = {folder / f"vmvault-{month}.{kind}": kind for kind in ("csv", "pdf")}
    missing = [path for path in targets if not path.exists()]
    if not missing:
        return []
    rows = monthly_report(month, inventory, points, catalog, vault_id)
    folder.mkdir(parents=True, exist_ok=True)
    for path in missing:
        data = to_csv(rows).encode() if targets[path] == "csv" else to_pdf(month, rows)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        log.info("wrote the monthly report %s", path)
    return [str(p) for p in missing]
