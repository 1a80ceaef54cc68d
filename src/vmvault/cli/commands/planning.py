"""Planning: will tonight's schedule fit (`plan`), and what the month costs (`cost`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import typer

from vmvault.cli.client import get_client
from vmvault.cli.options import (
    CatalogOpt,
    InventoryOpt,
    JsonOpt,
    PassFileOpt,
    VaultOpt,
    inventory_option,
)
from vmvault.cli.output import guarded, show
from vmvault.cli.render.planning import print_cost, print_plan
from vmvault.errors import UsageError


def plan(
    day: str | None = typer.Option(None, "--day", help="YYYY-MM-DD (UTC); default: tomorrow."),
    chart: str | None = typer.Option(None, "--chart", help="Write each pool's load (PNG/SVG)."),
    stagger: bool = typer.Option(False, "--stagger", help="Propose staggered start times."),
    apply: bool = typer.Option(
        False, "--apply", help="Write the proposed starts into the inventory (with --stagger)."
    ),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Will the schedule fit? Simulate a day: starts, ends, waits, pool load, findings."""
    client = get_client(vault, catalog, passphrase_file)

    def act() -> dict[str, Any]:
        if apply and not stagger:
            raise UsageError("--apply writes the proposal of --stagger: give both")
        try:
            when = (
                datetime.fromisoformat(day).replace(tzinfo=UTC)
                if day
                else datetime.now(UTC) + timedelta(days=1)
            )
        except ValueError:
            raise UsageError(f"--day {day!r} is not YYYY-MM-DD") from None
        return client.plan(when, stagger=stagger, apply=apply, chart=chart, inventory=inventory)

    show(guarded(json, act), json, print_plan)


def cost(
    currency: str | None = typer.Option(
        None, "--currency", help="Label of the prices (default: the inventory's, else USD)."
    ),
    csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
    inventory: str | None = inventory_option(
        "Inventory whose \\[pricing] table to use (default: Azure's list prices)."
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """This month's bill: protected instances (by size tier) and vault storage, per VM."""
    client = get_client(vault, catalog, passphrase_file)
    report = guarded(json, lambda: client.cost(currency, inventory))
    show(report, json, lambda report: print_cost(report, csv))
