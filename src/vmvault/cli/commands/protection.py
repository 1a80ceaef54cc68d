"""`vmvault protection`: stop/resume protection of a VM, soft delete and undelete."""

from __future__ import annotations

from typing import Any

import typer

from vmvault.app.protection import change_protection, set_immutability, set_soft_delete
from vmvault.cli.options import (
    CatalogOpt,
    JsonOpt,
    PassFileOpt,
    VaultOpt,
    context,
    vm_argument,
)
from vmvault.cli.output import guarded, show
from vmvault.cli.render.protection import (
    print_immutability,
    print_protection,
    print_soft_delete,
)

app = typer.Typer(
    help="Protection of VMs: stop, resume, soft delete, undelete.", no_args_is_help=True
)


def _act(
    json: bool,
    vault: str | None,
    catalog: str | None,
    passphrase_file: str | None,
    action: str,
    vm: str,
    **options: Any,
) -> None:
    ctx = guarded(json, lambda: context(vault, catalog, passphrase_file))
    doc = guarded(json, lambda: change_protection(ctx, vm, action, **options))
    show(doc, json, print_protection)


@app.command("stop")
def stop(
    vm: str = vm_argument(None),
    delete_data: bool = typer.Option(
        False, "--delete-data", help="Soft-delete its backup data (recoverable for a while)."
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Stop protecting a VM: retain its data (never pruned) or soft-delete it."""
    _act(json, vault, catalog, passphrase_file, "stop", vm, delete_data=delete_data)


@app.command("resume")
def resume(
    vm: str = vm_argument(None),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Protect a VM again (backups and retention resume)."""
    _act(json, vault, catalog, passphrase_file, "resume", vm)


@app.command("undelete")
def undelete(
    vm: str = vm_argument(None),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Recover soft-deleted data: back to "stop protection, retain data"."""
    _act(json, vault, catalog, passphrase_file, "undelete", vm)


@app.command("show")
def show_state(
    vm: str = vm_argument(None),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """A VM's protection state."""
    _act(json, vault, catalog, passphrase_file, "show", vm)


def immutability(
    value: str = typer.Argument(..., help="off, on, or locked (cannot be undone)."),
    store_days: int | None = typer.Option(
        None,
        "--store-days",
        help="Have the store enforce it too (S3 Object Lock, Azure immutability): keep every"
        " object the vault needs this many days past the last maintenance; refused where the"
        " store cannot. 0: vmvault only. Default: 30 where the store can, else vmvault only.",
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Make the vault immutable: no backup data deleted, no retention shortened."""
    doc = guarded(
        json,
        lambda: set_immutability(
            context(vault, catalog, passphrase_file),
            value,
            store_days=store_days,
            retain_existing=True,
        ),
    )
    show(doc, json, print_immutability)


def soft_delete(
    days: int = typer.Argument(..., help="How long deleted backup data stays recoverable."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Keep soft-deleted backup data this many days (14 to 180) before purging it."""
    doc = guarded(json, lambda: set_soft_delete(context(vault, catalog, passphrase_file), days))
    show(doc, json, print_soft_delete)
