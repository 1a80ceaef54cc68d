"""The vault: create it, check it, collect its garbage, rebuild its index, its local cache
(`vmvault vault`)."""

from __future__ import annotations

from typing import Any

import typer

from vmvault.app.replication import copy_retention_inventory, run_replicate
from vmvault.app.vaults import init_vault, local_cache, reindex, run_check, run_gc
from vmvault.cli.options import (
    CatalogOpt,
    InventoryOpt,
    JsonOpt,
    PassFileOpt,
    VaultOpt,
    cache_setting,
    context,
    force_option,
    remote,
)
from vmvault.cli.output import guarded, progress_bar, show
from vmvault.cli.render.vault import (
    print_cache,
    print_checked,
    print_collected,
    print_created,
    print_reindexed,
    print_replicated,
)
from vmvault.engine.replicate import DEFAULT_SAMPLE
from vmvault.errors import EXIT_DAMAGE, UsageError
from vmvault.inventory import load_inventory

app = typer.Typer(help="Vault maintenance.", no_args_is_help=True)
LOST_PASSPHRASE_WARNING = (
    "Everything in the vault is encrypted under this passphrase: if it is lost and no "
    "recovery key was made, the backups are lost too, and nobody can get them back. "
    "Make a recovery key now and keep it offline: vmvault vault key export --paper"
)


def init(
    compression_level: int = typer.Option(
        3,
        "--compression-level",
        min=1,
        max=19,
        help="zstd level for new data: 3 is the default balance; 1 is faster, larger.",
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Create a new, empty, encrypted vault."""

    def act() -> dict[str, Any]:
        v = init_vault(
            context(vault, catalog, passphrase_file), compression_level=compression_level
        )
        return {
            "vault": v.backend.describe(),
            "vault_id": v.config.vault_id,
            "format_version": v.config.version,
            "compression_level": v.config.compression_level,
            "warning": LOST_PASSPHRASE_WARNING,
        }

    show(guarded(json, act), json, print_created)


def check(
    read_data: bool = typer.Option(False, "--read-data", help="Also re-read every pack's bytes."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Check the whole vault: index vs packs, orphans, missing objects, (optionally) data."""
    report = guarded(
        json,
        lambda: run_check(context(vault, catalog, passphrase_file), read_data=read_data),
    )
    doc = report.to_dict()
    show(doc, json, lambda d: print_checked(d, read_data))
    if not doc["ok"]:
        raise typer.Exit(EXIT_DAMAGE)


def gc(
    grace: float = typer.Option(
        3600.0, "--grace", help="Never touch packs younger than this many seconds."
    ),
    repack_threshold: float = typer.Option(
        0.25, "--repack-threshold", help="Repack packs at least this dead (0-1)."
    ),
    force: bool = force_option(
        "Collect even with damaged points or records (what only they used is freed)."
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Free what no recovery point uses; safe while backups run (it defers its sweep)."""
    report = guarded(
        json,
        lambda: run_gc(
            context(vault, catalog, passphrase_file),
            grace=grace,
            repack_threshold=repack_threshold,
            force=force,
        ),
    )
    show(report.to_dict(), json, print_collected)


@app.command("reindex")
def reindex_cmd(
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Rebuild the chunk index from the packs and the catalog from the recovery points."""
    doc = guarded(json, lambda: reindex(context(vault, catalog, passphrase_file)))
    show(doc, json, print_reindexed)


@app.command("replicate")
def replicate_cmd(
    to: str = typer.Option(
        ..., "--to", help="Where the copy lives: a directory, s3://BUCKET/PREFIX or azure://..."
    ),
    to_passphrase_file: str | None = typer.Option(
        None,
        "--to-passphrase-file",
        help="A passphrase of the copy's own (env VMVAULT_COPY_PASSPHRASE[_FILE]); "
        "default: the vault's.",
    ),
    vm: str | None = typer.Option(None, "--vm", help="Only this VM's points."),
    sample: int = typer.Option(
        DEFAULT_SAMPLE, "--sample", min=0, help="Chunks of each copied point read back."
    ),
    prune: bool = typer.Option(
        False,
        "--prune",
        help="Then apply the copy's own retention (each VM's policy of --inventory, or "
        "--policy) and collect the copy's garbage.",
    ),
    policy: str | None = typer.Option(
        None, "--policy", help="With --prune: keep every VM's points in the copy by this policy."
    ),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Copy the recovery points a copy of the vault lacks (made if missing), still sealed."""

    def act() -> dict[str, Any]:
        ctx = context(vault, catalog, passphrase_file)
        if policy is not None and not prune:
            raise UsageError("--policy is the copy's retention: give it with --prune")
        keep = copy_retention_inventory(load_inventory(inventory), policy) if prune else None
        with progress_bar(not json) as progress:
            report = run_replicate(
                ctx,
                to,
                passphrase_file=to_passphrase_file,
                vm=vm,
                sample=sample,
                keep=keep,
                progress=progress,
            )
        return report.to_dict()

    doc = guarded(json, act)
    show(doc, json, print_replicated)
    if doc["skipped"]:
        raise typer.Exit(EXIT_DAMAGE)


@app.command("cache")
def cache_cmd(
    clear: bool = typer.Option(
        False, "--clear", help="Delete the cached copies (only --vault's, if a vault is given)."
    ),
    vault: str | None = VaultOpt,
    json: bool = JsonOpt,
) -> None:
    """The local cache of object-store vaults: where it is, its size and bound; --clear."""

    def act() -> dict[str, Any]:
        if remote() is not None:
            raise UsageError("the cache is this machine's: `vault cache` does not take --server")
        return local_cache(vault, clear=clear, enabled=cache_setting())

    show(guarded(json, act), json, print_cache)
