"""`vmvault backup`: disk images of one VM into a new recovery point.

Its own module, importing only the image backup's use case: a backup's start-up time is
mostly imports (docs/PERFORMANCE.md), and the other point commands need the inventory,
the catalog's readers and the retention code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from vmvault.app.backup import run_backup
from vmvault.app.disks import DiskSpec
from vmvault.backends.url import is_directory_vault
from vmvault.cli.options import (
    CatalogOpt,
    FullOpt,
    JsonOpt,
    LimitRateOpt,
    PassFileOpt,
    VaultOpt,
    WorkersOpt,
    context,
    format_option,
    rate_limit_bytes,
    vm_option,
)
from vmvault.cli.output import guarded, progress_bar, show
from vmvault.cli.render.points import print_point
from vmvault.errors import UsageError


def _disk_specs(
    images: list[str], names: list[str] | None, fmt: str | None, force_format: bool
) -> list[DiskSpec]:
    if names and len(names) != len(images):
        raise UsageError("give one --disk-name per image, or none")
    if force_format and fmt is None:
        raise UsageError("--force-format needs --format: the format to read the images as")
    if not names:
        names = [Path(img).stem or f"disk{i}" for i, img in enumerate(images)]
        if len(set(names)) != len(names):
            names = [f"disk{i}" for i in range(len(images))]
    return [
        DiskSpec(n, img, format=fmt, force_format=force_format)
        for n, img in zip(names, images, strict=True)
    ]


def backup_cmd(
    images: list[str] = typer.Argument(..., help="Disk images or block devices of one VM."),
    vm: str = vm_option("Name of the VM the disks belong to.", required=True),
    disk_name: list[str] | None = typer.Option(None, "--disk-name", help="Name per disk."),
    full: bool = FullOpt,
    fmt: str | None = format_option(
        "Image format: raw, qcow2, vpc (VHD) or vhdx (default: what the image's header says; "
        "a header that says otherwise is refused).",
        default=None,
    ),
    force_format: bool = typer.Option(
        False,
        "--force-format",
        help="Read the images as --format says without looking at their headers (a raw "
        "disk whose guest may write what looks like an image header).",
    ),
    limit_rate: float | None = LimitRateOpt,
    workers: int | None = WorkersOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Back up the disks of a VM into a new recovery point (incremental after the first)."""

    def act() -> dict[str, Any]:
        ctx = context(vault, catalog, passphrase_file)
        rate = rate_limit_bytes(limit_rate)
        with progress_bar(not json) as progress:
            point = run_backup(
                ctx,
                vm,
                _disk_specs(images, disk_name, fmt, force_format),
                full=full,
                workers=workers,
                rate_limit=rate,
                progress=progress,
            )
        if is_directory_vault(ctx.vault_path):
            return dict(point)
        # What an object store bills: every request the command made, retries included.
        return {**point, "requests": ctx.requests.to_dict()}

    show(guarded(json, act), json, print_point)
