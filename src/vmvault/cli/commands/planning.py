"""Planning: will tonight's schedule fit (`plan`), and what the month costs (`cost`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from vmvault.cli.options import (
    CatalogOpt,
    InventoryOpt,
    JsonOpt,
    PassFileOpt,
    VaultOpt,
    context,
    remote,
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
    from datetime import UTC, datetime, timedelta

    from vmvault.inventory import load_inventory
    from vmvault.planning.runner import apply_stagger, run_plan

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
        if (server := remote()) is not None:
            if apply:
                raise UsageError("--apply writes the inventory: run it where the inventory is")
            day_text = when.date().isoformat()
            result: dict[str, Any] = server.get("/api/v1/plan", day=day_text, stagger=stagger)
            if chart:
                if not chart.endswith(".svg"):
                    raise UsageError("with --server the chart comes as SVG: name it *.svg")
                svg = server.request_bytes("GET", "/api/v1/plan/chart.svg", day=day_text)
                Path(chart).write_bytes(svg)
                result["chart"] = chart
            return result
        ctx = context(vault, catalog, passphrase_file) if vault else None
        inv = load_inventory(inventory)
        result = run_plan(ctx, inv, when, stagger=stagger)
        if apply:
            apply_stagger(inv, result)
        if chart:
            from vmvault.planning.chart import render_load_chart

            budgets = {name: p.egress_mb_per_s for name, p in inv.pools.items()}
            result["chart"] = str(render_load_chart(result, chart, budgets))
        return result

    show(guarded(json, act), json, print_plan)


def cost(
    currency: str | None = typer.Option(
        None, "--currency", help="Label of the prices (default: the inventory's, else USD)."
    ),
    csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
    inventory: str | None = typer.Option(
        None,
        "--inventory",
        "-i",
        envvar="VMVAULT_INVENTORY",
        help="Inventory whose [pricing] table to use (default: Azure's list prices).",
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """This month's bill: protected instances (by size tier) and vault storage, per VM."""
    from vmvault.planning.runner import cost_report

    def act() -> dict[str, Any]:
        if (server := remote()) is not None:
            return dict(server.get("/api/v1/cost", currency=currency))
        prices = None
        if inventory:
            from vmvault.inventory import load_inventory

            prices = load_inventory(inventory).pricing.table()
        ctx = context(vault, catalog, passphrase_file)
        return cost_report(ctx, currency=currency, prices=prices).to_dict()

    show(guarded(json, act), json, lambda report: print_cost(report, csv))
