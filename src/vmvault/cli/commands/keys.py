"""The vault's keys (`vmvault vault key`): list, add, passwd, remove, export --paper,
import --paper.

Local only (a server holds no one's passphrase): each command opens the vault with the
passphrase (or recovery key) of --passphrase-file / VMVAULT_PASSPHRASE / the prompt."""

from __future__ import annotations

import os
from typing import Any

import typer

from vmvault.app import keys
from vmvault.cli.options import CatalogOpt, JsonOpt, PassFileOpt, VaultOpt, context, force_option
from vmvault.cli.output import guarded, show
from vmvault.cli.passphrase import NEW_PASSPHRASE_ENV, new_passphrase
from vmvault.cli.render.keys import print_added, print_keys, print_paper, print_removed
from vmvault.errors import UsageError
from vmvault.vault import paperkey

app = typer.Typer(
    help="The vault's keys: several passphrases and recovery keys open the same vault.",
    no_args_is_help=True,
)
NewPassFileOpt = typer.Option(
    None,
    "--new-passphrase-file",
    help=f"Read the new passphrase from this file (or env {NEW_PASSPHRASE_ENV}; else asked).",
)


@app.command("list")
def list_cmd(
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """The keys that open the vault; the one this command opened it with is marked."""
    doc = guarded(json, lambda: keys.list_keys(context(vault, catalog, passphrase_file)))
    show(doc, json, print_keys)


@app.command("add")
def add_cmd(
    label: str = typer.Option("", "--label", help="Whose key or what for (shown by `key list`)."),
    new_passphrase_file: str | None = NewPassFileOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Add a passphrase that opens the vault too (another admin; after a recovery key)."""

    def act() -> dict[str, Any]:
        ctx = context(vault, catalog, passphrase_file)
        ctx.known_passphrase = ctx.passphrase()  # asked for before the new one
        return keys.add_key(ctx, new_passphrase(new_passphrase_file), label=label)

    show(guarded(json, act), json, print_added)


@app.command("passwd")
def passwd_cmd(
    new_passphrase_file: str | None = NewPassFileOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Change the passphrase of the key you open the vault with (the old one stops working)."""

    def act() -> dict[str, Any]:
        ctx = context(vault, catalog, passphrase_file)
        ctx.known_passphrase = ctx.passphrase()
        return keys.change_passphrase(ctx, new_passphrase(new_passphrase_file))

    show(guarded(json, act), json, print_added)


@app.command("remove")
def remove_cmd(
    key_id: str = typer.Argument(..., help="The key's id (or a unique start of it)."),
    force: bool = force_option("Remove the key this command opened the vault with, too."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Remove a key: its passphrase or recovery key no longer opens the vault. Never the last."""
    doc = guarded(
        json,
        lambda: keys.remove_key(context(vault, catalog, passphrase_file), key_id, force=force),
    )
    show(doc, json, print_removed)


@app.command("import")
def import_cmd(
    paper: str = typer.Option(
        ..., "--paper", help="A file holding the recovery key as `key export --paper` printed it."
    ),
    label: str = typer.Option("", "--label", help="Whose key or what for (shown by `key list`)."),
    new_passphrase_file: str | None = NewPassFileOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    json: bool = JsonOpt,
) -> None:
    """Every passphrase lost: open the vault with a recovery key and give it a new one."""

    def act() -> dict[str, Any]:
        ctx = context(vault, catalog, paper)
        if not paperkey.looks_like_one(ctx.passphrase()):
            raise UsageError(f"{paper} does not hold a recovery key (`vault key export --paper`)")
        return keys.add_key(ctx, new_passphrase(new_passphrase_file), label=label)

    show(guarded(json, act), json, print_added)


def _write_private(path: str, text: str) -> None:
    """A new file only its owner can read (never one that exists: no recovery key lost)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)


@app.command("export")
def export_cmd(
    paper: bool = typer.Option(
        False, "--paper", help="As printable text with a checksum per line (the only form)."
    ),
    label: str = typer.Option(keys.RECOVERY_LABEL, "--label", help="Shown by `key list`."),
    output: str | None = typer.Option(
        None, "--output", "-o", help="Write it to this new file (mode 0600) instead of stdout."
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Make a recovery key: it opens the vault as a passphrase does.

    A passphrase file holding it opens the vault; `vault key import --paper` gives a new
    passphrase when every one is lost."""

    def act() -> dict[str, Any]:
        if not paper:
            raise UsageError("say --paper: a recovery key is exported as printable text")
        doc = keys.export_recovery_key(context(vault, catalog, passphrase_file), label=label)
        if output is not None:
            _write_private(output, doc.pop("paper"))
            doc["written_to"] = output
        return doc

    show(guarded(json, act), json, print_paper)
