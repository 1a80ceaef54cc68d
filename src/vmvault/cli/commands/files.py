"""Files inside a recovery point, without restoring its disk: `vmvault files ls`,
`vmvault files get`, and `vmvault mount`."""

from __future__ import annotations

from typing import Any

import typer

from vmvault.cli.options import JsonOpt, LatestVmOpt, PassFileOpt, VaultOpt, context, remote
from vmvault.cli.output import fail, guarded, show
from vmvault.cli.render.files import print_copied, print_listing
from vmvault.errors import UsageError

app = typer.Typer(
    help="List and copy files inside a recovery point's disks (no restore of the disk).",
    no_args_is_help=True,
)

PointArg = typer.Argument(..., help="Point id (or a unique prefix, or 'latest').")
DiskOpt = typer.Option(None, "--disk", help="Which disk of the point (if it has several).")


def _local() -> None:
    if remote() is not None:
        raise UsageError("file browsing runs on this host: not with --server (see the dashboard)")


@app.command("ls")
def ls(
    point: str = PointArg,
    path: str = typer.Argument("/", help="/ for the disk's volumes, then /VOLUME/PATH."),
    disk: str | None = DiskOpt,
    vm: str | None = LatestVmOpt,
    vault: str | None = VaultOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """List a directory inside a point's disk (at / its volumes: partitions, LVM volumes)."""
    from vmvault.app.files import list_files

    def act() -> dict[str, Any]:
        _local()
        return list_files(context(vault, None, passphrase_file), point, path, disk=disk, vm=vm)

    show(guarded(json, act), json, print_listing)


@app.command("get")
def get(
    point: str = PointArg,
    paths: list[str] = typer.Argument(..., help="Files or directories: /VOLUME/PATH ..."),
    to: str = typer.Option(..., "--to", help="Copy into this directory (made if missing)."),
    disk: str | None = DiskOpt,
    vm: str | None = LatestVmOpt,
    no_owners: bool = typer.Option(
        False, "--no-owners", help="Leave the copies owned by you (owners are kept as root)."
    ),
    vault: str | None = VaultOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Copy files or directories out of a point, with their modes, owners and times.

    Symlinks and holes are kept too; only the vault blocks that hold the files are read.
    Nothing existing is overwritten."""
    from vmvault.app.files import damage_of, get_files

    def act() -> dict[str, Any]:
        _local()
        ctx = context(vault, None, passphrase_file)
        owners = False if no_owners else None
        return get_files(ctx, point, paths, to, disk=disk, vm=vm, owners=owners)

    doc = guarded(json, act)
    damage = damage_of(doc)
    if damage is not None and json:
        doc["error"] = {"code": damage.code, "message": damage.message}
    show(doc, json, print_copied)
    if damage is not None:
        if json:
            raise typer.Exit(damage.exit_code)
        fail(damage, json)


def mount_cmd(
    point: str = PointArg,
    mountpoint: str = typer.Argument(..., help="An empty directory to mount the point on."),
    disk: str | None = DiskOpt,
    vm: str | None = LatestVmOpt,
    vault: str | None = VaultOpt,
    passphrase_file: str | None = PassFileOpt,
) -> None:
    """Mount a point's disk read-only (FUSE) to browse it, a folder per volume.

    It runs until unmounted (fusermount3 -u DIR) or Ctrl-C."""
    from vmvault.files.mount import serve_mount

    def act() -> None:
        _local()
        serve_mount(context(vault, None, passphrase_file), point, mountpoint, disk=disk, vm=vm)

    guarded(False, act)
