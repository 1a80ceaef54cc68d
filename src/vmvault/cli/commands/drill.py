"""`vmvault vm drill`: boot a point in an isolated QEMU and wait for its sign of life."""

from __future__ import annotations

from typing import Any

import typer

from vmvault.cli.commands.instant_vm import inventory_if_any
from vmvault.cli.options import (
    CatalogOpt,
    InventoryOpt,
    JsonOpt,
    PassFileOpt,
    VaultOpt,
    context,
)
from vmvault.cli.output import guarded, show
from vmvault.cli.render.drill import print_drill
from vmvault.errors import EXIT_DAMAGE, UsageError
from vmvault.inventory import DrillSettings


def drill_cmd(
    vm: str = typer.Argument(..., help="The VM whose point to boot."),
    point: str = typer.Option("latest", "--point", help="Point id, prefix, or 'latest'."),
    console_text: str | None = typer.Option(
        None, "--console", help="Sign of life: this text on the serial console."
    ),
    guest_agent: bool = typer.Option(
        False, "--guest-agent", help="Sign of life: the guest agent answers."
    ),
    script: str | None = typer.Option(None, "--script", help="Sign of life: this exits 0."),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds to wait (300)."),
    accel: str | None = typer.Option(None, "--accel", help="auto, kvm or tcg."),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Run a restore drill now: the inventory's drill for the VM, or the sign given here."""
    from vmvault.recovery.drill import run_drill  # QEMU's and nbdkit's launchers: here only
    from vmvault.recovery.instant_vm import boot_settings

    def act() -> Any:
        ctx = context(vault, catalog, passphrase_file)
        inv = inventory_if_any(inventory)
        entry = inv.vm(vm) if inv is not None and any(v.name == vm for v in inv.vms) else None
        given = {"console": console_text, "guest_agent": guest_agent or None, "script": script}
        if sum(v is not None for v in given.values()) > 1:
            raise UsageError("give one of --console, --script, --guest-agent")
        if any(v is not None for v in given.values()):
            settings = DrillSettings.model_validate(
                {k: v for k, v in given.items() if v is not None}
            )
        elif entry is not None and entry.drill is not None:
            settings = entry.drill
        else:
            raise UsageError(
                f"no drill for {vm} in the inventory: give --console, --script or --guest-agent"
            )
        if timeout is not None:
            if timeout <= 0:
                raise UsageError("--timeout must be more than 0 seconds")
            settings = settings.model_copy(update={"timeout": timeout})
        boot = boot_settings(ctx, inv, vm, point, {"accel": accel})
        return run_drill(ctx, vm, point, settings, boot)

    doc = guarded(json, act)
    show(doc, json, print_drill)
    if doc["result"] != "boot-verified":
        raise typer.Exit(EXIT_DAMAGE)
