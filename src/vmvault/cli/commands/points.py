"""Recovery points: list, restore, verify, forget, prune (retention). Backing up is in
``backup.py``, apart, so a backup loads none of what these need."""

from __future__ import annotations

import os
from typing import Any

import typer

from vmvault.app.points import forget_point
from vmvault.app.restore import run_restore
from vmvault.app.retention import run_prune
from vmvault.cli.client import get_client
from vmvault.cli.options import (
    CatalogOpt,
    FromOpt,
    InventoryOpt,
    JsonOpt,
    LatestVmOpt,
    PassFileOpt,
    VaultOpt,
    WorkersOpt,
    context,
    force_option,
    format_option,
    point_argument,
    restore_source,
    vm_option,
)
from vmvault.cli.output import emit_json, guarded, progress_bar, show
from vmvault.cli.render.points import (
    print_forgotten,
    print_points,
    print_pruned,
    print_restored,
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
        print_points(listing.summaries, listing.damaged, listing.known_ids)


def restore(
    point: str = point_argument(),
    target: str = typer.Argument(..., help="File (created sparse) or block device."),
    disk: str | None = typer.Option(None, "--disk", help="Which disk of the point."),
    fmt: str = format_option("Target format: raw, qcow2, vpc (VHD) or vhdx."),
    vm: str | None = LatestVmOpt,
    ignore_errors: bool = typer.Option(
        False, "--ignore-errors", help="Restore all that is readable; list the damaged ranges."
    ),
    workers: int | None = WorkersOpt,
    sync: bool = typer.Option(False, "--sync", help="fsync a file target before finishing."),
    force: bool = force_option("Replace an existing file (never written through a symlink)."),
    copy: str | None = FromOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Restore a disk of a recovery point, verifying every chunk."""

    def act() -> dict[str, Any]:
        location, key_file = restore_source(vault, copy, passphrase_file)
        ctx = context(location, catalog, key_file)
        with progress_bar(not json) as progress:
            report = run_restore(
                ctx,
                point,
                target,
                disk=disk,
                vm=vm,
                target_format=fmt,
                ignore_errors=ignore_errors,
                workers=workers,
                sync=sync,
                force=force,
                progress=progress,
            )
        return {"target": os.path.abspath(target), **report.to_dict()}

    show(guarded(json, act), json, print_restored)


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
