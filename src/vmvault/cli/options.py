"""Options every command shares, and turning them into a service context."""

from __future__ import annotations

import math
import os
from datetime import time as clock_time
from typing import TYPE_CHECKING, Any

import typer

from vmvault.app.context import Context
from vmvault.cli.passphrase import prompt_passphrase
from vmvault.errors import UsageError
from vmvault.units import MIN_RATE

if TYPE_CHECKING:
    from vmvault.cli.remote import Remote

# Declared once, shared by the commands. Where commands give the same option different
# help texts, a factory takes each command's text (the help stays exactly as it was).


def json_option(help: str | None = "Print one JSON document instead of text.") -> Any:
    return typer.Option(False, "--json", help=help)


def inventory_option(
    help: str = "Inventory file (env VMVAULT_INVENTORY; default /etc/vmvault/inventory.toml).",
) -> Any:
    return typer.Option(None, "--inventory", "-i", envvar="VMVAULT_INVENTORY", help=help)


def vm_option(help: str, *, required: bool = False) -> Any:
    """``--vm NAME``: the VM of a backup (``required``), or a filter."""
    return typer.Option(... if required else None, "--vm", help=help)


def vm_argument(help: str | None = "VM name.") -> Any:
    return typer.Argument(..., help=help)


def point_argument(default: Any = ...) -> Any:
    """A recovery point: required, or ``default`` (``latest``)."""
    return typer.Argument(default, help="Point id (or a unique prefix, or 'latest').")


def format_option(help: str, default: str | None = "raw") -> Any:
    """``--format/-f`` of a disk image (``default`` unless given)."""
    return typer.Option(default, "--format", "-f", help=help)


def full_option(help: str | None = "Ignore the parent point: read everything.") -> Any:
    return typer.Option(False, "--full", help=help)


def force_option(help: str) -> Any:
    return typer.Option(False, "--force", help=help)


def once_option(help: str) -> Any:
    return typer.Option(False, "--once", help=help)


VaultOpt = typer.Option(
    None,
    "--vault",
    "-V",
    envvar="VMVAULT_VAULT",
    help="Vault: a directory, s3://BUCKET/PREFIX or azure://ACCOUNT/CONTAINER/PREFIX"
    " (env VMVAULT_VAULT).",
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
JsonOpt = json_option()
InventoryOpt = inventory_option()
FullOpt = full_option()
LatestVmOpt = vm_option("With 'latest': the VM's latest point.")
LimitRateOpt = typer.Option(None, "--limit-rate", help="Read at most this many MB/s per disk.")
WorkersOpt = typer.Option(None, "--workers", help="Threads (default: cores).")
FromOpt = typer.Option(
    None,
    "--from",
    help="Restore from this copy of the vault (see `vault replicate`) instead of --vault; "
    "--passphrase-file (or VMVAULT_COPY_PASSPHRASE_FILE) gives the copy's own passphrase.",
)
JobIdArg = typer.Argument(...)


def broker_option(help: str) -> Any:
    return typer.Option(None, "--broker", envvar="VMVAULT_BROKER", help=help)


BrokerOpt = broker_option(
    "A fleet: send jobs to `vmvault worker --host` processes through this Redis "
    "(redis://HOST:PORT/DB; env VMVAULT_BROKER). Without it jobs run in this process."
)


_remote: list[Remote] = []  # set by the root command's --server / --token
_no_cache: list[bool] = [False]  # set by the root command's --no-cache


def use_remote(remote: Remote | None) -> None:
    _remote.clear()
    if remote is not None:
        _remote.append(remote)


def use_cache(enabled: bool) -> None:
    """``--no-cache``: every context of this command reads its object store directly."""
    _no_cache[0] = not enabled


def cache_setting() -> bool | None:
    """False with ``--no-cache``; None leaves it to ``$VMVAULT_NO_CACHE``."""
    return False if _no_cache[0] else None


def remote() -> Remote | None:
    """The server to talk to, when ``--server`` was given; otherwise None (work locally)."""
    return _remote[0] if _remote else None


def context(vault: str | None, catalog: str | None, passphrase_file: str | None) -> Context:
    if remote() is not None:
        raise UsageError("this command works on a local vault only, not with --server")
    if not vault:
        raise UsageError(
            "no vault given: use --vault DIR (or s3://BUCKET[/PREFIX],"
            " azure://ACCOUNT/CONTAINER[/PREFIX]) or set VMVAULT_VAULT"
        )
    return Context(
        vault,
        catalog,
        passphrase_file,
        ask_passphrase=prompt_passphrase,
        cache=cache_setting(),
    )


def restore_source(
    vault: str | None, copy: str | None, passphrase_file: str | None
) -> tuple[str | None, str | None]:
    """Where a restore reads, and its passphrase file: the copy given by ``--from`` (the
    vault may be gone) with the copy's passphrase file if one is set, else the vault."""
    if copy is None:
        return vault, passphrase_file
    if remote() is not None:
        raise UsageError("--from restores from a copy on this machine, not with --server")
    return copy, passphrase_file or os.environ.get("VMVAULT_COPY_PASSPHRASE_FILE")


MIN_RATE_MB_S = MIN_RATE  # slower than this, a 4 MiB block takes minutes: surely a typo


def rate_limit_bytes(limit_rate: float | None) -> float | None:
    """``--limit-rate`` (MB/s) as bytes per second, or None when not given."""
    if limit_rate is None:
        return None
    if not math.isfinite(limit_rate) or limit_rate < MIN_RATE_MB_S:
        raise UsageError(f"--limit-rate must be at least {MIN_RATE_MB_S} MB/s, not {limit_rate:g}")
    return limit_rate * 1e6


MaintenanceAtOpt = typer.Option(
    "12:00", "--maintenance-at", help="UTC time (HH:MM) for daily retention and GC."
)


def maintenance_time(text: str) -> clock_time:
    """``--maintenance-at HH:MM`` (UTC)."""
    try:
        return clock_time.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--maintenance-at {text!r} is not HH:MM") from None
