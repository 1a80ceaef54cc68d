"""Asking a person at a terminal for the vault's passphrase (the CLI's ``ask_passphrase``)."""

from __future__ import annotations

import sys
from getpass import getpass

from vmvault.app.context import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV
from vmvault.errors import PassphraseMissing


def prompt_passphrase(confirm: bool) -> str:
    """Ask on the terminal (twice with ``confirm``); without one, say where it can come from."""
    if not sys.stdin.isatty():
        raise PassphraseMissing(
            f"no passphrase: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}, "
            "or use --passphrase-file"
        )
    first = getpass("Vault passphrase: ")
    if confirm and getpass("Repeat passphrase: ") != first:
        raise PassphraseMissing("the passphrases do not match")
    if not first:
        raise PassphraseMissing("an empty passphrase is not allowed")
    return first
