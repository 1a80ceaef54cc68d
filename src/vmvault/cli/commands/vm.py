"""`vmvault vm`: the VMs of the inventory, backing one up, and discovering libvirt's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from vmvault.app.backup import run_vm_backup
from vmvault.app.vm_restore import run_vm_restore
from vmvault.cli.options import (
    CatalogOpt,
    InventoryOpt,
    JsonOpt,
    PassFileOpt,
    VaultOpt,
    context,
    rate_limit_bytes,
    remote,
)
from vmvault.cli.output import emit_json, fail, guarded, show
from vmvault.cli.render.points import print_point
from vmvault.cli.render.vm import (
    print_discovered,
    print_fleet,
    print_inventory,
    print_job_end,
    print_vm,
    print_vm_restored,
)
from vmvault.errors import UsageError

if TYPE_CHECKING:
    from vmvault.inventory import Inventory, Vm


def load_inventory(path: str | None) -> Inventory:
    """The inventory module (pydantic) is imported only by the commands that need it."""
    from vmvault.inventory import load_inventory as load

    return load(path)


app = typer.Typer(help="VMs declared in the inventory.", no_args_is_help=True)


def vm_doc(vm: Vm) -> dict[str, Any]:
    return {
        **vm.model_dump(mode="json"),
        "protected": [d.name for d in vm.protected_disks()],
        "excluded": [d.name for d in vm.excluded_disks()],
    }


@app.command("list")
def list_vms(inventory: str | None = InventoryOpt, json: bool = JsonOpt) -> None:
    """List the VMs of the inventory with their disks (with --server: the fleet's state)."""
    if (server := remote()) is not None:
        rows = guarded(json, lambda: server.get("/api/v1/vms", limit=500)["items"])
        _print_fleet(rows, json)
        return
    inv = guarded(json, lambda: load_inventory(inventory))
    if json:
        emit_json({"inventory": inv.source, "vms": [vm_doc(vm) for vm in inv.vms]})
    else:
        print_inventory(inv)


@app.command("show")
def show_vm(
    name: str = typer.Argument(..., help="VM name."),
    inventory: str | None = InventoryOpt,
    json: bool = JsonOpt,
) -> None:
    """Show one VM: its disks, roles, formats, pools and consistency settings."""
    if (server := remote()) is not None:
        row = guarded(json, lambda: server.get(f"/api/v1/vms/{name}"))
        _print_fleet([row], json, single=True)
        return
    vm = guarded(json, lambda: load_inventory(inventory).vm(name))
    doc = vm_doc(vm)
    show(doc, json, lambda doc: print_vm(vm, doc))


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
    from vmvault.inventory.discovery import discover

    found = guarded(json, lambda: discover(connect))
    if json:
        emit_json(found.to_dict())
    else:
        print_discovered(found)


@app.command("backup")
def backup_vm(
    name: str = typer.Argument(..., help="VM name."),
    inventory: str | None = InventoryOpt,
    full: bool = typer.Option(False, "--full", help="Ignore the parent point: read everything."),
    limit_rate: float | None = typer.Option(
        None, "--limit-rate", help="Read at most this many MB/s per disk."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="With --server: follow the job."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Back up a VM: scripts, freeze, snapshot, all non-temporary disks in parallel."""
    from vmvault.cli.output import progress_bar

    if remote() is not None:
        _run_remote(json, f"/api/v1/vms/{name}/backup", {"full": full}, wait)
        return

    def act() -> dict[str, Any]:
        inv = load_inventory(inventory)
        ctx = context(vault, catalog, passphrase_file)
        with progress_bar(not json) as progress:
            return run_vm_backup(
                ctx,
                inv,
                name,
                full=full,
                rate_limit=rate_limit_bytes(limit_rate),
                progress=progress,
            )

    show(guarded(json, act), json, print_point)


@app.command("restore")
def restore_vm(
    name: str = typer.Argument(..., help="VM name."),
    point: str = typer.Option("latest", "--point", help="Point id, prefix, or 'latest'."),
    new_name: str | None = typer.Option(None, "--as", help="Restore as a new VM of this name."),
    directory: str | None = typer.Option(None, "--to", help="Directory for the new VM's disks."),
    pool: str | None = typer.Option(None, "--pool", help="Storage pool of --to (for warnings)."),
    in_place: bool = typer.Option(False, "--in-place", help="Replace the VM's disks (stopped)."),
    yes: bool = typer.Option(False, "--yes", help="Confirm replacing disks in place."),
    force: bool = typer.Option(
        False, "--force", help="With --as: replace files of the same names in --to."
    ),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Restore all disks and the config of a VM: as a new VM beside it, or in place."""
    from vmvault.cli.output import progress_bar

    if remote() is not None:
        if in_place or directory or not new_name:
            fail(
                UsageError("with --server, restore as a new VM: --as NAME (no --to, --in-place)"),
                json,
            )
        body = {"vm": name, "point": point, "new_name": new_name, "pool": pool}
        _run_remote(json, "/api/v1/restores", body, True)
        return

    def act() -> dict[str, Any]:
        inv = load_inventory(inventory)
        ctx = context(vault, catalog, passphrase_file)
        with progress_bar(not json) as progress:
            return run_vm_restore(
                ctx,
                inv,
                name,
                point_ref=point,
                new_name=new_name,
                directory=directory,
                target_pool=pool,
                in_place=in_place,
                confirmed=yes,
                force=force,
                progress=progress,
            )

    show(guarded(json, act), json, print_vm_restored)


def _print_fleet(rows: list[dict[str, Any]], json: bool, single: bool = False) -> None:
    if json:
        emit_json(rows[0] if single else {"vms": rows})
    else:
        print_fleet(rows)


def _run_remote(json: bool, path: str, body: dict[str, Any], wait: bool) -> None:
    """Queue a job on the server; with ``wait``, follow it and fail as it fails."""
    server = remote()
    assert server is not None
    from vmvault.cli.output import progress_bar

    job = guarded(json, lambda: server.post(path, body))
    if wait:
        with progress_bar(not json) as progress:  # the server's per-disk progress, live
            job = guarded(json, lambda: server.wait(job["id"], progress))
    show(job, json, print_job_end)
    if job["state"] in ("failed", "cancelled"):
        raise typer.Exit(1)
