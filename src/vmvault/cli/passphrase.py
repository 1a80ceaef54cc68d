"""Asking a person at a terminal for the vault's passphrase (the CLI's ``ask_passphrase``),
and for a new one (`vault key add`, `vault key passwd`)."""

from __future__ import annotations

import os
import sys
from getpass import getpass

from vmvault.app.context import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, read_passphrase_file
from vmvault.errors import PassphraseMissing

NEW_PASSPHRASE_ENV = "VMVAULT_NEW_PASSPHRASE"


def _ask(prompt: str, repeat: str | None) -> str:
    first = getpass(prompt)
    if repeat is not None and getpass(repeat) != first:
        raise PassphraseMissing("the passphrases do not match")
    if not first:
        raise PassphraseMissing("an empty passphrase is not allowed")
    return first


def prompt_passphrase(confirm: bool) -> str:
    """Ask on the terminal (twice with ``confirm``); without one, say where it can come from."""
    if not sys.stdin.isatty():
        raise PassphraseMissing(
            f"no passphrase: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}, "
            "or use --passphrase-file"
        )
    return _ask("Vault passphrase: ", "Repeat passphrase: " if confirm else None)


def new_passphrase(path: str | None) -> str:
    """A new key's passphrase: from ``path``, ``$VMVAULT_NEW_PASSPHRASE``, or asked twice."""
    if path:
        return read_passphrase_file(path)
    if env := os.environ.get(NEW_PASSPHRASE_ENV):
        return env
    if not sys.stdin.isatty():
        raise PassphraseMissing(
            f"no new passphrase: use --new-passphrase-file or set {NEW_PASSPHRASE_ENV}"
        )
    return _ask("New passphrase: ", "Repeat new passphrase: ")
