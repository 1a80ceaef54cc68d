"""Human output of `vmvault protection` and the vault's protection settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmvault.cli.output import console


def print_protection(doc: dict[str, Any]) -> None:
    purge = f", data purged after {doc['purge_at'][:19]}" if doc["purge_at"] else ""
    console.print(f"{doc['vm']}: {doc['status']}{purge}")


def print_immutability(doc: Mapping[str, Any]) -> None:
    console.print(f"immutability: {doc['immutability']}")


def print_soft_delete(doc: Mapping[str, Any]) -> None:
    console.print(f"soft delete keeps data {doc['soft_delete_days']} days")
