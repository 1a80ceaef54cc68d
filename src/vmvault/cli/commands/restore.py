"""`vmvault restore`: a disk of a recovery point to a file or a block device.

Its own module, importing only the restore's use case, for the same reason as
``backup.py``: the other point commands load the inventory and the catalog's readers.
"""

from __future__ import annotations

import os
from typing import Any

import typer

from vmvault.app.restore import run_restore
from vmvault.cli.options import (
    CatalogOpt,
    FromOpt,
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
)
from vmvault.cli.output import guarded, progress_bar, show
from vmvault.cli.render.points import print_restored


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
