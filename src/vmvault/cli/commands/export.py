"""Serve a recovery point's disk over NBD, list the exports, stop them (`vmvault export`)."""

from __future__ import annotations

from typing import Any

import typer

from vmvault.cli.options import JsonOpt, LatestVmOpt, PassFileOpt, VaultOpt, context, remote
from vmvault.cli.output import guarded, show
from vmvault.cli.render.export import print_export, print_exports, print_stopped
from vmvault.errors import UsageError


def export_cmd(
    point: str | None = typer.Argument(
        None, help="Point id (or a unique prefix, or 'latest') to serve."
    ),
    disk: str | None = typer.Option(None, "--disk", help="Which disk of the point."),
    vm: str | None = LatestVmOpt,
    socket: str | None = typer.Option(
        None,
        "--socket",
        help="Serve on this Unix socket (default: one in the exports' folder, see --list).",
    ),
    port: int | None = typer.Option(None, "--port", help="Serve on this TCP port instead."),
    address: str = typer.Option(
        "127.0.0.1", "--address", help="With --port: the address to listen on (NBD has no login)."
    ),
    writable: bool = typer.Option(
        False,
        "--writable",
        help="Accept writes, kept in a local overlay until the export ends; never in the vault.",
    ),
    expires: str = typer.Option(
        "12h", "--expires", help="End the export after this long: 90s, 30m, 12h, 2d."
    ),
    cache_mb: int = typer.Option(
        128, "--cache-mb", help="Memory for the blocks read and read ahead (MiB)."
    ),
    list_: bool = typer.Option(False, "--list", help="List the exports running on this host."),
    stop: str | None = typer.Option(
        None, "--stop", help="Stop the export with this id (see --list), or 'all'."
    ),
    vault: str | None = VaultOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Serve a disk of a recovery point over NBD (read-only unless --writable)."""
    # Imported here: the command list (`vmvault --help`) need not load the launcher.
    from vmvault.export.launch import list_exports, parse_duration, start_export, stop_exports

    def act() -> Any:
        if sum((point is not None, list_, stop is not None)) != 1:
            raise UsageError("give a point to export, or --list, or --stop ID")
        if remote() is not None:
            raise UsageError("exports run on this host: not with --server")
        if list_:
            return {"exports": list_exports()}
        if stop is not None:
            return {"stopped": stop_exports(stop)}
        assert point is not None
        return start_export(
            context(vault, None, passphrase_file),
            point,
            disk=disk,
            vm=vm,
            socket_path=socket,
            port=port,
            address=address,
            writable=writable,
            expires_in=parse_duration(expires),
            cache_mb=cache_mb,
        )

    doc = guarded(json, act)
    if list_:
        show(doc, json, print_exports)
    elif stop is not None:
        show(doc, json, print_stopped)
    else:
        show(doc, json, print_export)
