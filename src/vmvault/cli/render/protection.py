"""Human output of `vmvault protection` and the vault's protection settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmvault.cli.output import console


def print_protection(doc: dict[str, Any]) -> None:
    purge = f", data purged after {doc['purge_at'][:19]}" if doc["purge_at"] else ""
    console.print(f"{doc['vm']}: {doc['status']}{purge}", soft_wrap=True)


def _say(text: str) -> None:
    """One line as it is: a bucket's name or a store's words are no markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def print_immutability(doc: Mapping[str, Any]) -> None:
    console.print(f"immutability: {doc['immutability']}", soft_wrap=True)
    store = doc.get("store")
    if not store or doc["immutability"] == "off":
        return
    if not store["enforced"]:
        _say(f"enforced by vmvault only: {store['detail']}")
        return
    _say(
        f"the store enforces it too: {store['feature']}, {store['mode'].upper()} mode; every"
        f" object the vault needs is retained {store['days']} days past the last maintenance"
    )
    if store.get("note"):
        _say(f"note: {store['note']}")
    done = store.get("retained_now")
    if done:
        line = f"objects already there: {done['checked']} checked, {done['extended']} retained now"
        if done.get("problem"):
            line += f"; stopped: {done['problem']}"
        _say(line)


def print_soft_delete(doc: Mapping[str, Any]) -> None:
    console.print(f"soft delete keeps data {doc['soft_delete_days']} days", soft_wrap=True)
