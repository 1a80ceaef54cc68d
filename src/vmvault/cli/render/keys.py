"""Human output of `vault key`: the list, what was added or removed, a recovery key."""

from __future__ import annotations

import sys
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from vmvault.cli.output import console, err_console


def _kdf(kdf: dict[str, int] | None) -> str:
    return f"{kdf['n']}/{kdf['r']}/{kdf['p']}" if kdf else "-"


def _time(created: str | None) -> str:
    return created[:16].replace("T", " ") if created else "-"


def print_keys(doc: dict[str, Any]) -> None:
    table = Table(title=f"keys of vault {doc['vault_id']}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("id", "kind", "label", "created (UTC)", "scrypt", "used"):
        if col == "label":  # a label wraps within its column; ids and times are never cut
            table.add_column(col, overflow="fold", min_width=8)
        else:
            table.add_column(col, no_wrap=True)
    for key in doc["keys"]:
        table.add_row(
            key["id"],
            key["kind"] or "[red]damaged[/]",
            escape(key["label"] or "-") if not key["problem"] else escape(key["problem"]),
            _time(key["created"]),
            _kdf(key["kdf"]),
            "yes" if key["current"] else "",
        )
    console.print(table)


def print_added(doc: dict[str, Any]) -> None:
    if "removed" in doc:
        console.print(
            f"passphrase changed: key {doc['added']} added, key {doc['removed']} removed "
            "(the old passphrase no longer opens the vault)",
            soft_wrap=True,
        )
    else:
        label = f" ({escape(doc['label'])})" if doc["label"] else ""
        console.print(
            f"key {doc['added']}{label} added: its passphrase opens the vault", soft_wrap=True
        )


def print_removed(doc: dict[str, Any]) -> None:
    console.print(f"key {doc['removed']} removed: it no longer opens the vault", soft_wrap=True)


def print_paper(doc: dict[str, Any]) -> None:
    """The recovery key on stdout as plain text (nothing rich could reflow), the advice on
    stderr so that `> file` keeps the key alone."""
    if "paper" in doc:
        sys.stdout.write(doc["paper"])
        sys.stdout.flush()
    else:
        console.print(f"recovery key written to {escape(doc['written_to'])}", soft_wrap=True)
    err_console.print(
        f"This recovery key (key {doc['added']}) opens the vault as a passphrase does: "
        "print it or write it down, keep it offline, and check it with "
        "`vmvault vault key list --passphrase-file FILE`. Anyone who holds it can read "
        f"every backup; `vmvault vault key remove {doc['added']}` revokes it.",
        highlight=False,
        soft_wrap=True,
    )
