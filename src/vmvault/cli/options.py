"""Options every command shares, and turning them into a service context."""

from __future__ import annotations

import typer

from vmvault import service
from vmvault.errors import UsageError

VaultOpt = typer.Option(
    None, "--vault", "-V", envvar="VMVAULT_VAULT", help="Vault directory (env VMVAULT_VAULT)."
)
CatalogOpt = typer.Option(
    None,
    "--catalog",
    envvar="VMVAULT_CATALOG",
    help="Catalog database URL (env VMVAULT_CATALOG; default: SQLite in ~/.local/share/vmvault).",
)
PassFileOpt = typer.Option(
    None,
    "--passphrase-file",
    help="Read the passphrase from this file (or env VMVAULT_PASSPHRASE).",
)
JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of text.")
InventoryOpt = typer.Option(
    None,
    "--inventory",
    "-i",
    envvar="VMVAULT_INVENTORY",
    help="Inventory file (env VMVAULT_INVENTORY; default /etc/vmvault/inventory.toml).",
)


def context(vault: str | None, catalog: str | None, passphrase_file: str | None) -> service.Context:
    if not vault:
        raise UsageError("no vault given: use --vault DIR or set VMVAULT_VAULT")
    return service.Context(vault, catalog, passphrase_file)
