"""`vmvault vm`: the VMs of the inventory, backing one up, and discovering libvirt's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import typer

from vmvault.cli.client import Fleet, Job, VmRestore, VmShown, get_client
from vmvault.cli.commands.drill import drill_cmd
from vmvault.cli.commands.instant_vm import instant_restore_cmd
from vmvault.cli.options import (
    CatalogOpt,
    FromOpt,
    FullOpt,
    InventoryOpt,
    JsonOpt,
    LimitRateOpt,
    PassFileOpt,
    VaultOpt,
    force_option,
    restore_source,
    vm_argument,
)
from vmvault.cli.output import emit_json, guarded, show
from vmvault.cli.render.points import print_point
from vmvault.cli.render.vm import (
    print_discovered,
    print_fleet,
    print_inventory,
    print_job_end,
    print_restore_job_end,
    print_vm,
    print_vm_restored,
)
from vmvault.inventory import Vm

app = typer.Typer(help="VMs declared in the inventory.", no_args_is_help=True)


def vm_doc(vm: Vm) -> dict[str, Any]:
    return {
        **vm.model_dump(mode="json"),
        "protected": [d.name for d in vm.protected_disks()],
        "excluded": [d.name for d in vm.excluded_disks()],
    }


def shown_doc(shown: VmShown) -> dict[str, Any]:
    """``vm show``'s document: the VM, and with a vault its last backup as the server's
    fleet rows give it (None: never backed up)."""
    doc = vm_doc(shown.vm)
    if shown.vault_read:
        newest = shown.newest
        doc["last_backup"] = (newest.get("completed") or newest["created"]) if newest else None
        doc["last_point"] = newest["id"] if newest else None
    if shown.instant is not None:
        doc["instant_restore"] = shown.instant
    return doc


@app.command("list")
def list_vms(inventory: str | None = InventoryOpt, json: bool = JsonOpt) -> None:
    """List the VMs of the inventory with their disks (with --server: the fleet's state)."""
    client = get_client()
    inv = guarded(json, lambda: client.list_vms(inventory))
    if isinstance(inv, Fleet):
        show({"vms": inv.rows}, json, lambda doc: print_fleet(doc["vms"]))
    elif json:
        emit_json({"inventory": inv.source, "vms": [vm_doc(vm) for vm in inv.vms]})
    else:
        print_inventory(inv)


@app.command("show")
def show_vm(
    name: str = vm_argument(),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Show one VM: its disks, roles, formats, pools, consistency settings, last backup.

    The last backup is looked up in the vault, when one is given."""
    client = get_client(vault, catalog, passphrase_file)
    shown = guarded(json, lambda: client.show_vm(name, inventory))
    if isinstance(shown, Fleet):
        show(shown.rows[0], json, lambda row: print_fleet([row]))
    else:
        show(shown_doc(shown), json, lambda doc: print_vm(shown.vm, doc))


@app.command("discover")
def discover_vms(
    connect: str | None = typer.Option(
        None,
        "--connect",
        "-c",
        help="libvirt connection URI (default: virsh's own, e.g. qemu:///system).",
    ),
    json: bool = JsonOpt,
) -> None:
    """Print inventory entries for libvirt's domains (read with virsh), to review and paste."""
    from vmvault.inventory.discovery import discover  # XML parsing: for `vm discover` alone

    found = guarded(json, lambda: discover(connect))
    if json:
        emit_json(found.to_dict())
    else:
        print_discovered(found)


@app.command("backup")
def backup_vm(
    name: str = vm_argument(),
    inventory: str | None = InventoryOpt,
    full: bool = FullOpt,
    limit_rate: float | None = LimitRateOpt,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="With --server: follow the job."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Back up a VM: scripts, freeze, snapshot, all non-temporary disks in parallel."""
    client = get_client(vault, catalog, passphrase_file, progress=not json)
    point = guarded(
        json,
        lambda: client.vm_backup(name, inventory, full=full, limit_rate=limit_rate, wait=wait),
    )
    _show_run(point, json, print_point)


@app.command("restore")
def restore_vm(
    name: str = vm_argument(),
    point: str = typer.Option("latest", "--point", help="Point id, prefix, or 'latest'."),
    new_name: str | None = typer.Option(None, "--as", help="Restore as a new VM of this name."),
    directory: str | None = typer.Option(None, "--to", help="Directory for the new VM's disks."),
    pool: str | None = typer.Option(None, "--pool", help="Storage pool of --to (for warnings)."),
    in_place: bool = typer.Option(False, "--in-place", help="Replace the VM's disks (stopped)."),
    yes: bool = typer.Option(False, "--yes", help="Confirm replacing disks in place."),
    force: bool = force_option("With --as: replace files of the same names in --to."),
    copy: str | None = FromOpt,
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Restore all disks and the config of a VM: as a new VM beside it, or in place."""
    location, key_file = guarded(json, lambda: restore_source(vault, copy, passphrase_file))
    client = get_client(location, catalog, key_file, progress=not json)
    restored = guarded(
        json,
        lambda: client.vm_restore(
            name,
            inventory,
            VmRestore(point, new_name, directory, pool, in_place, confirmed=yes, force=force),
        ),
    )
    _show_run(restored, json, print_vm_restored, print_restore_job_end)


app.command("instant-restore")(instant_restore_cmd)
app.command("drill")(drill_cmd)


def _show_run(
    result: Mapping[str, Any] | Job,
    json: bool,
    human: Callable[[Mapping[str, Any]], None],
    job_end: Callable[[dict[str, Any]], None] = print_job_end,
) -> None:
    """A run's result; or the server's job that ran it (shown by ``job_end``), failing as
    the job failed."""
    if isinstance(result, Job):
        show(result.doc, json, job_end)
        if result.failed:
            raise typer.Exit(1)
    else:
        show(result, json, human)
