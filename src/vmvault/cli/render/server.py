"""Human output of `vmvault serve`, `vmvault token` and `vmvault alerts`."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from vmvault.cli.output import console


def print_serving(scheme: str, host: str, port: int) -> None:
    console.print(f"vmvault serving on {scheme}://{host}:{port}/ (API under /api/v1)")


def print_token_created(doc: dict[str, Any]) -> None:
    """A new token: who it is for, then its secret alone on a line (shown this once)."""
    console.print(f"token {doc['id']} ({doc['name']}, {doc['role']}): shown once, keep it safe")
    typer.echo(doc["token"])


def print_tokens(rows: list[dict[str, Any]]) -> None:
    table = Table(title="API tokens")
    for col in ("id", "name", "role", "created", "last used", "revoked"):
        table.add_column(col)
    for t in rows:
        table.add_row(
            str(t["id"]),
            t["name"],
            t["role"],
            t["created_at"][:19],
            (t["last_used_at"] or "-")[:19],
            "yes" if t["revoked"] else "no",
        )
    console.print(table)


def print_token_revoked(doc: dict[str, Any]) -> None:
    console.print(f"token {doc['id']} ({doc['name']}) revoked")


def print_alerts(rows: list[dict[str, Any]]) -> None:
    """Alerts, newest first, with how many of their deliveries succeeded."""
    table = Table(title="alerts")
    for col in ("id", "at", "severity", "kind", "vm", "message", "delivered"):
        table.add_column(col)
    for a in rows:
        sent = sum(1 for d in a["deliveries"] if d["ok"])
        table.add_row(
            str(a["id"]),
            a["at"][:19],
            a["severity"],
            a["kind"],
            a["vm"] or "-",
            a["message"],
            f"{sent}/{len(a['deliveries'])}" if a["deliveries"] else "-",
        )
    console.print(table)
