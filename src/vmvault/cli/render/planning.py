"""Human output of the planning commands: the simulated day (`plan`) and the bill (`cost`)."""

from __future__ import annotations

from datetime import date
from typing import Any

import typer
from rich.table import Table

from vmvault.cli.output import console, human_bytes
from vmvault.planning.cost import rows_to_csv
from vmvault.units import human_mb_rate


def print_plan(doc: dict[str, Any]) -> None:
    """The simulated day: jobs, estimates and their sources, pool load, findings, stagger."""
    table = Table(title=f"backups on {doc['day']} (UTC)")
    for col in ("vm", "kind", "due", "start", "end", "wait", "in window"):
        table.add_column(col)
    for j in doc["jobs"]:
        table.add_row(
            j["vm"],
            doc["estimates"][j["vm"]]["tonight"],
            _time_of(j["due"], doc["day"]),
            _time_of(j["start"], doc["day"]),
            _time_of(j["end"], doc["day"]),
            f"{j['wait_s']} s",
            "[red]no[/]" if j["late"] else "yes",
        )
    console.print(table)
    estimates = Table(title="estimates per VM: duration (transfer + snapshot), and the sources")
    for col in ("vm", "data", "initial", "at", "incremental", "at", "changed"):
        estimates.add_column(col)
    for vm, e in doc["estimates"].items():
        initial, incremental = e["initial"], e["incremental"]
        estimates.add_row(
            vm,
            f"{human_bytes(initial['data_bytes'])}\n[dim]{e['data_source']}[/]",
            _duration(initial["total_s"]),
            f"{human_mb_rate(initial['rate_mb_s'])}\n[dim]{initial['rate_source']}[/]",
            _duration(incremental["total_s"]),
            f"{human_mb_rate(incremental['rate_mb_s'])}\n[dim]{incremental['rate_source']}[/]",
            f"{human_bytes(incremental['changed_bytes'])}\n[dim]{incremental['changed_source']}[/]",
        )
    console.print(estimates)
    for pool, load in doc["pools"].items():
        budget = load["egress_mb_s"]
        console.print(
            f"pool {pool}: peak {human_mb_rate(load['peak_mb_s'])}"
            + (f" of {human_mb_rate(budget)}" if budget is not None else "")
            + f", demand up to {human_mb_rate(load['demand_peak_mb_s'])}"
        )
    for pool, held in doc.get("instant_restore", {}).items():
        if held["bytes"] or held["cap_bytes"]:
            cap = f" of its cap {human_bytes(held['cap_bytes'])}" if held["cap_bytes"] else ""
            console.print(
                f"pool {pool}: instant-restore snapshots hold {human_bytes(held['bytes'])}{cap}"
            )
    console.print(_fit(doc["summary"]))
    for f in doc["findings"]:
        console.print(f"[yellow]{f['code']}[/]: {f['message']}")
    if "chart" in doc:
        console.print(f"chart: {doc['chart']}")
    if doc["stagger"]:
        proposal = doc["stagger"]
        for vm, start in proposal["start"].items():
            console.print(
                f'proposed for {vm}: start = "{start}" ({proposal["starts"][vm][11:16]} UTC)'
            )
        for pool, before in proposal["demand_before_mb_s"].items():
            after = proposal["demand_after_mb_s"].get(pool)
            console.print(
                f"pool {pool}: demand up to {human_mb_rate(before)} -> "
                + (human_mb_rate(after) if after is not None else "-")
            )
        console.print(f"staggered: {_fit(proposal['summary_after'])}")
        if proposal["applied"]:
            console.print(f"written to {proposal['applied']}: {len(proposal['start'])} start(s)")
        elif not proposal["start"]:
            console.print("every VM keeps its start")


def _time_of(moment: str | None, day: str) -> str:
    """HH:MM of an ISO instant, marked +1d (+2d) when it falls after ``day``."""
    if moment is None:
        return "-"
    days = (date.fromisoformat(moment[:10]) - date.fromisoformat(day)).days
    return moment[11:16] + (f" +{days}d" if days else "")


def _fit(summary: dict[str, Any]) -> str:
    if summary["fits"]:
        return "[green]fits[/]: no pool over its budget, no job waiting or late"
    problems = []
    if summary["pools_over_budget"]:
        problems.append(
            f"pools over their egress budget: {', '.join(summary['pools_over_budget'])}"
        )
    if summary["jobs_waiting"]:
        problems.append(f"{summary['jobs_waiting']} job(s) wait for the admission limits")
    if summary["jobs_late"]:
        problems.append(f"{summary['jobs_late']} job(s) end after their window")
    return "[red]over-subscribed[/]: " + "; ".join(problems)


def _duration(seconds: float) -> str:
    """An estimate's duration: 2.8 s, 42 s, 17 min, then 2:05 h (an hour or more; a bare
    0:01 h would read as an hour)."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if round(seconds) < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60}:{minutes % 60:02d} h"


def print_cost(report: dict[str, Any], csv: bool) -> None:
    """The month's bill per VM, as a table (and its total) or as CSV."""
    if csv:
        typer.echo(rows_to_csv(report["rows"]), nl=False)
        return
    table = Table(title=f"monthly cost, Azure-equivalent price ({report['currency']})")
    for col in (
        "vm",
        "protected",
        "instances",
        "instance cost",
        "storage",
        "storage cost",
        "total",
        "billed",
    ):
        table.add_column(col)
    for row in report["rows"]:
        table.add_row(
            row["vm"],
            human_bytes(row["protected_instance_bytes"]),
            str(row["instances"]),
            row["instance_cost"],
            human_bytes(row["storage_bytes"]),
            row["storage_cost"],
            row["total"],
            "yes" if row["billed"] else f"no ({row['reason']})",
        )
    console.print(table)
    console.print(f"total: {report['totals']['total']} {report['currency']}")
