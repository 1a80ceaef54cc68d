"""Recovery points: list, verify, forget, prune (retention). Backing up and restoring are
in ``backup.py`` and ``restore.py``, apart, so they load none of what these need."""

from __future__ import annotations

from typing import Any

import typer

from vmvault.app.points import forget_point
from vmvault.app.retention import run_prune
from vmvault.cli.client import get_client
from vmvault.cli.options import (
    CatalogOpt,
    InventoryOpt,
    JsonOpt,
    LatestVmOpt,
    PassFileOpt,
    VaultOpt,
    context,
    point_argument,
    vm_option,
)
from vmvault.cli.output import emit_json, guarded, show
from vmvault.cli.render.points import (
    print_forgotten,
    print_points,
    print_pruned,
    print_verified,
)
from vmvault.errors import EXIT_DAMAGE
from vmvault.inventory import load_inventory


def list_cmd(
    vm: str | None = vm_option("Only this VM's points."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """List recovery points."""
    client = get_client(vault, catalog, passphrase_file)
    listing = guarded(json, lambda: client.list_points(vm))
    if json:
        emit_json({"points": listing.points, "damaged": listing.damaged})
    else:
        print_points(listing.summaries, listing.damaged, listing.known_ids, vm)


def verify(
    point: str = point_argument("latest"),
    vm: str | None = LatestVmOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Read back every chunk of a point: authenticate, decompress, re-hash."""
    client = get_client(vault, catalog, passphrase_file, progress=not json)

    def act() -> dict[str, Any]:
        point_id, disks = client.verify(point, vm)
        return {"point": point_id, "ok": not any(d["damaged"] for d in disks), "disks": disks}

    doc = guarded(json, act)
    show(doc, json, print_verified)
    if not doc["ok"]:
        raise typer.Exit(EXIT_DAMAGE)


def forget(
    point: str = typer.Argument(..., help="Point id (or a unique prefix)."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Delete a recovery point; its data is freed by the next `vmvault gc`."""
    point_id = guarded(json, lambda: forget_point(context(vault, catalog, passphrase_file), point))
    show({"forgotten": point_id}, json, print_forgotten)


def prune(
    vm: str | None = vm_option("Only this VM (default: every VM)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; delete nothing."),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Apply each VM's retention policy (GFS): delete the points it no longer keeps."""
    doc = guarded(
        json,
        lambda: run_prune(
            context(vault, catalog, passphrase_file),
            load_inventory(inventory),
            vm_name=vm,
            dry_run=dry_run,
        ),
    )
    show(doc, json, lambda d: print_pruned(d, dry_run))
