"""`vmvault vm instant-restore`: boot a VM from a recovery point at once, finish (move its
disks off the vault while it runs), list, stop (discard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from vmvault.cli.options import InventoryOpt, JsonOpt, PassFileOpt, VaultOpt, context, remote
from vmvault.cli.output import guarded, show
from vmvault.cli.render.instant_vm import print_finished, print_instant_vm, print_instant_vms
from vmvault.errors import UsageError
from vmvault.inventory import DEFAULT_INVENTORY, Inventory, load_inventory


def inventory_if_any(path: str | None) -> Inventory | None:
    """The inventory if one is given or the default one exists: instant recovery works
    from the vault alone (a VM gone from the inventory is what it is for)."""
    if path is None and not Path(DEFAULT_INVENTORY).exists():
        return None
    return load_inventory(path)


def instant_restore_cmd(
    vm: str | None = typer.Argument(None, help="The VM whose point to boot."),
    point: str = typer.Option("latest", "--point", help="Point id, prefix, or 'latest'."),
    new_name: str | None = typer.Option(None, "--as", help="Name of the new VM."),
    storage: str | None = typer.Option(
        None, "--storage", help="Folder for the new VM's disks (overlays, then its own disks)."
    ),
    memory: int | None = typer.Option(None, "--memory", help="MiB (default 1024)."),
    cpus: int | None = typer.Option(None, "--cpus", help="Virtual CPUs (default 1)."),
    accel: str | None = typer.Option(
        None, "--accel", help="auto (KVM if /dev/kvm answers), kvm or tcg."
    ),
    kernel: str | None = typer.Option(None, "--kernel", help="Boot this kernel (direct boot)."),
    initrd: str | None = typer.Option(None, "--initrd", help="With --kernel: its initramfs."),
    append: str | None = typer.Option(None, "--append", help="With --kernel: its command line."),
    network: bool | None = typer.Option(
        None, "--network/--no-network", help="A user-mode NIC (default: none)."
    ),
    list_: bool = typer.Option(False, "--list", help="List the instant VMs of this host."),
    finish: str | None = typer.Option(
        None, "--finish", help="Move this instant VM's disks into its storage, then end exports."
    ),
    stop: str | None = typer.Option(
        None, "--stop", help="Discard this instant VM: kill it, delete its overlays."
    ),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Run a VM from a recovery point in seconds; --finish moves its disks off the vault."""
    # Imported here: `vmvault --help` need not load QEMU's and nbdkit's launchers.
    from vmvault.recovery.instant_vm import (
        boot_settings,
        finish_instant_vm,
        instant_restore,
        list_instant_vms,
        stop_instant_vm,
    )

    def act() -> Any:
        if sum((vm is not None, list_, finish is not None, stop is not None)) != 1:
            raise UsageError("give a VM to boot, or --list, or --finish NAME, or --stop NAME")
        if remote() is not None:
            raise UsageError("instant VMs run on this host: not with --server")
        if list_:
            return {"vms": list_instant_vms()}
        if stop is not None:
            return stop_instant_vm(stop)
        ctx = context(vault, None, passphrase_file)
        if finish is not None:
            return finish_instant_vm(ctx, finish)
        assert vm is not None
        if new_name is None or storage is None:
            raise UsageError("give the new VM's name (--as NAME) and its --storage DIR")
        if (initrd or append) and not kernel:
            raise UsageError("--initrd and --append go with --kernel")
        changes = {
            "memory_mb": memory,
            "cpus": cpus,
            "accel": accel,
            "kernel": str(Path(kernel).absolute()) if kernel else None,
            "initrd": str(Path(initrd).absolute()) if initrd else None,
            "append": append,
            "network": network,
        }
        boot = boot_settings(ctx, inventory_if_any(inventory), vm, point, changes)
        return instant_restore(
            ctx, vm, point=point, new_name=new_name, storage=Path(storage), boot=boot
        )

    doc = guarded(json, act)
    if list_:
        show(doc, json, print_instant_vms)
    elif finish is not None or stop is not None:
        show(doc, json, print_finished)
    else:
        show(doc, json, print_instant_vm)
