"""Human output of `vmvault vm`: the inventory's VMs, the fleet's state, VM restores, jobs."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from vmvault.cli.output import console, human_bytes
from vmvault.cli.render.tables import (
    SHORT_LEVELS,
    add_figure_column,
    add_text_column,
    compact_table,
    fitting,
    when,
)
from vmvault.inventory import Disk, Inventory, Vm

if TYPE_CHECKING:  # discovery parses XML: imported by `vm discover` alone
    from vmvault.inventory.discovery import Discovery


def print_inventory(inv: Inventory) -> None:
    """The VMs an inventory declares, with their disks and pools; a long name wraps within
    its column, never cut."""
    table = compact_table(f"VMs in {inv.source}")
    for col in ("name", "host", "state", "policy", "protected disks", "excluded", "pools"):
        add_text_column(table, col)
    for vm in inv.vms:
        table.add_row(
            *map(
                escape,
                (
                    vm.name,
                    vm.host,
                    vm.state.value,
                    vm.policy or "-",
                    ", ".join(f"{d.name} ({d.role.value})" for d in vm.protected_disks()),
                    ", ".join(d.name for d in vm.excluded_disks()) or "-",
                    ", ".join(sorted({d.pool for d in vm.disks if d.pool})) or "-",
                ),
            )
        )
    console.print(table)


def print_vm(vm: Vm, doc: dict[str, Any]) -> None:
    """One VM of the inventory: its settings, then its disks (``doc``: its JSON document);
    paths wrap within their column, never cut."""
    console.print(
        escape(
            f"{vm.name} on {vm.host}: {vm.state.value}, policy {vm.policy or '-'}, "
            f"snapshot {vm.snapshot}, scripts {vm.scripts or '-'}"
            + (f", guest agent {vm.guest_agent}" if vm.guest_agent else "")
        ),
        highlight=False,
        soft_wrap=True,
    )
    table = compact_table()
    for col in ("disk", "role", "format", "pool", "path", "included"):
        add_text_column(table, col)
    for d in vm.disks:
        table.add_row(
            *map(
                escape,
                (
                    d.name,
                    d.role.value,
                    _format_shown(d),
                    d.pool or "-",
                    d.path,
                    "no (temporary)" if d.name in doc["excluded"] else "yes",
                ),
            )
        )
    console.print(table)
    if instant := doc.get("instant_restore"):
        console.print(instant_line(instant), highlight=False, soft_wrap=True)
    if "last_backup" not in doc:
        console.print(
            "last backup: unknown (no vault given: --vault or VMVAULT_VAULT)", soft_wrap=True
        )
    elif doc["last_backup"] is None:
        console.print("last backup: never", soft_wrap=True)
    else:
        console.print(
            f"last backup: {when(doc['last_backup'])} (point {doc['last_point']})",
            highlight=False,
            soft_wrap=True,
        )


def instant_line(instant: dict[str, Any]) -> str:
    """The instant-restore snapshots a VM keeps beside its disks, and what bounds them."""
    if not instant["keeps"]:
        return "instant-restore snapshots: none kept (the policy keeps none)"
    cap = f", cap {human_bytes(instant['cap_bytes'])}" if instant["cap_bytes"] else ""
    fewer = f" ({instant['why_fewer']})" if instant.get("why_fewer") else ""
    return (
        f"instant-restore snapshots: {instant['points']} of at most {instant['keeps']} kept"
        f"{fewer}, "
        f"{human_bytes(instant['bytes'])} beside the disks{cap}"
    )


def _format_shown(disk: Disk) -> str:
    """A disk's declared format; "auto": its header's, probed at each backup."""
    if disk.format is None:
        return "auto"
    return disk.format.value + (", forced" if disk.force_format else "")


def print_fleet(rows: list[dict[str, Any]]) -> None:
    """VMs as the server sees them: protection, last backup, next run. Times are written
    as `vm show` writes them, or (a terminal too narrow) as 'MM-DD HH:MM' in UTC; a long
    name wraps within its column; no time is ever cut."""

    def build(wide: bool) -> Table:
        table = compact_table("VMs" if wide else "VMs (times in UTC)")
        for col in ("name", "state", "policy", "protection"):
            add_text_column(table, col)
        add_figure_column(table, "last backup", right=False)
        add_text_column(table, "consistency" if wide else "cons.")
        add_figure_column(table, "next run", right=False)
        for vm in rows:
            level = vm["consistency"] or "-"
            table.add_row(
                *map(escape, (vm["name"], vm["state"], vm["policy"] or "-", vm["protection"])),
                when(vm["last_backup"], short=not wide, none="never"),
                level if wide else SHORT_LEVELS.get(level, level),
                when(vm["next_run"], short=not wide, none="-"),
            )
        return table

    console.print(fitting(build, console.width))


def print_discovered(found: Discovery) -> None:
    # Plain text, not rich: TOML's [[tables]] would be taken for markup.
    sys.stdout.write(found.to_toml())


def print_vm_restored(doc: Mapping[str, Any]) -> None:
    """A VM restore: its warnings, the point it restored (what latest was), where each disk
    went, the safety point, the new entry."""
    for warning in doc["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"restored point {doc['point']} of {doc['vm']}", highlight=False)
    for d in doc["disks"]:
        console.print(f"restored {d['name']} -> {d['path']}", highlight=False, soft_wrap=True)
    if "safety_point" in doc:
        console.print(f"the disks as they were are kept in point {doc['safety_point']}")
    if "inventory" in doc:
        console.print(
            f"new VM {doc['new_vm']}: inventory entry in {doc['inventory']}",
            highlight=False,
            soft_wrap=True,
        )


def print_restore_job_end(job: dict[str, Any]) -> None:
    """A server's VM restore job at its end; when it succeeded, what it restored where (its
    details are the local restore's document)."""
    print_job_end(job)
    if job["state"] == "succeeded" and "disks" in job.get("details", {}):
        print_vm_restored({"warnings": [], **job["details"]})


def print_job_end(job: dict[str, Any]) -> None:
    """A server job as it stands (queued, or followed to its end): state, point, error."""
    point = f", point {job['point_id']}" if job.get("point_id") else ""
    console.print(f"job {job['id']} ({job['kind']} of {job['vm']}): {job['state']}{point}")
    if job.get("error_message"):
        console.print(f"[red]error:[/] {job['error_message']}")
