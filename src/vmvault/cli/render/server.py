"""Human output of `vmvault serve`, `vmvault token` and `vmvault alerts`."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from vmvault.cli.output import console
from vmvault.cli.render.tables import (
    add_figure_column,
    add_text_column,
    compact_table,
    fitting,
    when,
)


def print_serving(scheme: str, host: str, port: int) -> None:
    console.print(
        f"vmvault serving on {scheme}://{host}:{port}/ (API under /api/v1)", soft_wrap=True
    )


def print_token_created(doc: dict[str, Any]) -> None:
    """A new token: who it is for, then its secret alone on a line (shown this once)."""
    console.print(
        f"token {doc['id']} ({doc['name']}, {doc['role']}): shown once, keep it safe",
        soft_wrap=True,
    )
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
    console.print(f"token {doc['id']} ({doc['name']}) revoked", soft_wrap=True)


def print_alerts(rows: list[dict[str, Any]]) -> None:
    """Alerts, newest first, with how many of their deliveries succeeded. The kind is never
    cut; a message too long for its column wraps within it."""

    def build(wide: bool) -> Table:
        table = compact_table("alerts" if wide else "alerts (times in UTC)")
        add_figure_column(table, "id")
        add_figure_column(table, "at", right=False)
        for col in ("severity", "kind"):
            add_figure_column(table, col, right=False)
        add_text_column(table, "vm")
        add_text_column(table, "message")
        add_figure_column(table, "delivered" if wide else "sent")
        for a in rows:
            sent = sum(1 for d in a["deliveries"] if d["ok"])
            table.add_row(
                str(a["id"]),
                when(a["at"], short=not wide),
                a["severity"],
                a["kind"],
                escape(a["vm"] or "-"),
                escape(a["message"]),
                f"{sent}/{len(a['deliveries'])}" if a["deliveries"] else "-",
            )
        return table

    console.print(fitting(build, console.width))
