"""`vmvault`: init a vault, back up disks, list, restore, verify and check recovery points.

Every command prints a human summary, or with ``--json`` exactly one JSON document. Errors
are one line on stderr (or ``{"error": ...}`` with --json) and a non-zero exit code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from vmvault import __version__
from vmvault.app.backup import run_backup
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point, list_points
from vmvault.app.restore import run_restore, run_verify
from vmvault.app.retention import run_prune
from vmvault.app.vaults import init_vault, reindex, run_check, run_gc
from vmvault.cli.options import (
    CatalogOpt,
    InventoryOpt,
    JsonOpt,
    PassFileOpt,
    VaultOpt,
    context,
    rate_limit_bytes,
    remote,
)
from vmvault.cli.output import console, emit_json, fail, guarded, human_bytes, progress_bar
from vmvault.errors import EXIT_DAMAGE, UsageError

app = typer.Typer(
    help="vmvault: incremental, deduplicated, encrypted backups of VM disks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
vault_app = typer.Typer(help="Vault maintenance.", no_args_is_help=True)


@app.callback()
def main(
    server: str | None = typer.Option(
        None,
        "--server",
        envvar="VMVAULT_SERVER",
        help="Talk to this vmvault server (env VMVAULT_SERVER) for read and run commands.",
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="VMVAULT_TOKEN", help="API token for --server (env VMVAULT_TOKEN)."
    ),
    ca_cert: str | None = typer.Option(
        None, "--ca-cert", envvar="VMVAULT_CA_CERT", help="CA bundle to trust for an https server."
    ),
) -> None:
    """vmvault: incremental, deduplicated, encrypted backups of VM disks."""
    from vmvault.cli.options import use_remote

    if server is None:
        use_remote(None)
        return
    if not token:
        fail(UsageError("--server needs --token (or VMVAULT_TOKEN)"), False)
    from vmvault.cli.remote import Remote

    use_remote(Remote(server, token, ca_cert))


app.add_typer(vault_app, name="vault")


@app.command()
def version(json: bool = JsonOpt) -> None:
    """Print the version."""
    if json:
        emit_json({"version": __version__})
    else:
        console.print(f"vmvault {__version__}")


@app.command()
def init(
    compression_level: int = typer.Option(
        3,
        "--compression-level",
        min=1,
        max=19,
        help="zstd level for new data: 3 is the default balance; 1 is faster, larger.",
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Create a new, empty, encrypted vault."""

    def act() -> dict[str, Any]:
        v = init_vault(
            context(vault, catalog, passphrase_file), compression_level=compression_level
        )
        return {
            "vault": v.backend.describe(),
            "vault_id": v.config.vault_id,
            "format_version": v.config.version,
            "compression_level": v.config.compression_level,
        }

    doc = guarded(json, act)
    if json:
        emit_json(doc)
    else:
        console.print(f"created vault {doc['vault_id']} at {doc['vault']}")


def _disk_specs(images: list[str], names: list[str] | None, fmt: str) -> list[DiskSpec]:
    if names and len(names) != len(images):
        raise UsageError("give one --disk-name per image, or none")
    if not names:
        names = [Path(img).stem or f"disk{i}" for i, img in enumerate(images)]
        if len(set(names)) != len(names):
            names = [f"disk{i}" for i in range(len(images))]
    return [DiskSpec(n, img, format=fmt) for n, img in zip(names, images, strict=True)]


@app.command("backup")
def backup_cmd(
    images: list[str] = typer.Argument(..., help="Disk images or block devices of one VM."),
    vm: str = typer.Option(..., "--vm", help="Name of the VM the disks belong to."),
    disk_name: list[str] | None = typer.Option(None, "--disk-name", help="Name per disk."),
    full: bool = typer.Option(False, "--full", help="Ignore the parent point: read everything."),
    fmt: str = typer.Option(
        "raw", "--format", "-f", help="Image format: raw, qcow2, vpc (VHD) or vhdx."
    ),
    limit_rate: float | None = typer.Option(
        None, "--limit-rate", help="Read at most this many MB/s per disk."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Threads (default: cores)."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Back up the disks of a VM into a new recovery point (incremental after the first)."""

    def act() -> dict[str, Any]:
        ctx = context(vault, catalog, passphrase_file)
        rate = rate_limit_bytes(limit_rate)
        with progress_bar(not json) as progress:
            return run_backup(
                ctx,
                vm,
                _disk_specs(images, disk_name, fmt),
                full=full,
                workers=workers,
                rate_limit=rate,
                progress=progress,
            )

    point = guarded(json, act)
    if json:
        emit_json(point)
    else:
        print_point(point)


def print_point(point: dict[str, Any]) -> None:
    """A backup's summary: per disk what was read, changed, new and written, and how fast."""
    table = Table(title=f"recovery point {point['id']} ({point['type']}, {point['vm']})")
    for col in ("disk", "size", "read", "changed", "new", "written", "time", "MB/s"):
        table.add_column(col, justify="left" if col == "disk" else "right")
    for d in point["disks"]:
        st = d["stats"]
        seconds = max(st["seconds"], 1e-9)
        table.add_row(
            d["name"],
            human_bytes(d["size"]),
            human_bytes(st["read"]),
            human_bytes(st["changed"]),
            human_bytes(st["new"]),
            human_bytes(st["stored"]),
            f"{st['seconds']:.2f} s",
            f"{d['size'] / seconds / 1e6:.0f}",
        )
    console.print(table)
    for d in point.get("excluded", []):
        console.print(f"excluded: {d['name']} ({d['reason']})")
    level = point["consistency"]
    console.print(f"consistency: [bold]{level['level']}[/] ({level.get('reason', '')})")


@app.command("list")
def list_cmd(
    vm: str | None = typer.Option(None, "--vm", help="Only this VM's points."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """List recovery points."""
    from vmvault.fleet import point_summary

    if (server := remote()) is not None:
        page = guarded(json, lambda: server.get("/api/v1/points", vm=vm, limit=500))
        points = page["items"]
        points.reverse()  # oldest first, as locally
        summaries = points
        damaged = page.get("damaged", [])
    else:
        listing = guarded(json, lambda: list_points(context(vault, catalog, passphrase_file), vm))
        points = listing.points
        summaries = [point_summary(p) for p in points]
        damaged = listing.damaged_docs()
    if json:
        emit_json({"points": points, "damaged": damaged})
        return
    table = Table(title="recovery points")
    for col in ("id", "vm", "type", "consistency", "disks", "size", "changed", "written"):
        table.add_column(col)
    for p in summaries:
        table.add_row(
            p["id"],
            p["vm"],
            p["type"],
            p["consistency"],
            ", ".join(p["disks"]),
            human_bytes(p["size"]),
            human_bytes(p["changed"]),
            human_bytes(p["stored"]),
        )
    console.print(table)
    for d in damaged:
        console.print(f"[red]damaged[/] point {d['id']}: {d['error']}")


@app.command()
def restore(
    point: str = typer.Argument(..., help="Point id (or a unique prefix, or 'latest')."),
    target: str = typer.Argument(..., help="File (created sparse) or block device."),
    disk: str | None = typer.Option(None, "--disk", help="Which disk of the point."),
    fmt: str = typer.Option(
        "raw", "--format", "-f", help="Target format: raw, qcow2, vpc (VHD) or vhdx."
    ),
    vm: str | None = typer.Option(None, "--vm", help="With 'latest': the VM's latest point."),
    ignore_errors: bool = typer.Option(
        False, "--ignore-errors", help="Restore all that is readable; list the damaged ranges."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Threads (default: cores)."),
    sync: bool = typer.Option(False, "--sync", help="fsync a file target before finishing."),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing file (never written through a symlink)."
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Restore a disk of a recovery point, verifying every chunk."""

    def act() -> dict[str, Any]:
        ctx = context(vault, catalog, passphrase_file)
        with progress_bar(not json) as progress:
            report = run_restore(
                ctx,
                point,
                target,
                disk=disk,
                vm=vm,
                target_format=fmt,
                ignore_errors=ignore_errors,
                workers=workers,
                sync=sync,
                force=force,
                progress=progress,
            )
        return {"target": os.path.abspath(target), **report.to_dict()}

    doc = guarded(json, act)
    if json:
        emit_json(doc)
        return
    rate = doc["size"] / max(doc["seconds"], 1e-9) / 1e6
    console.print(
        f"restored {doc['disk']} to {doc['target']}: {human_bytes(doc['size'])}, "
        f"{human_bytes(doc['bytes_verified'])} verified, {doc['seconds']:.2f} s ({rate:.0f} MB/s)"
    )
    for d in doc["damaged"]:
        console.print(f"[red]damaged[/] bytes {d['start']}-{d['end']}: {d['reason']}")


@app.command()
def verify(
    point: str = typer.Argument("latest", help="Point id (or a unique prefix, or 'latest')."),
    vm: str | None = typer.Option(None, "--vm", help="With 'latest': the VM's latest point."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Read back every chunk of a point: authenticate, decompress, re-hash."""

    def act() -> dict[str, Any]:
        if (server := remote()) is not None:
            from vmvault.cli.remote import RemoteError

            point_id = server.point_id(point, vm)
            job = server.wait(server.post(f"/api/v1/points/{point_id}/verify")["id"])
            if job["state"] != "succeeded" and not job["details"].get("disks"):
                raise RemoteError(str(job["error_code"]), f"server: {job['error_message']}")
            disks = job["details"]["disks"]
        else:
            ctx = context(vault, catalog, passphrase_file)
            with progress_bar(not json) as progress:
                point_id, reports = run_verify(ctx, point, vm=vm, progress=progress)
            disks = [r.to_dict() for r in reports]
        return {"point": point_id, "ok": not any(d["damaged"] for d in disks), "disks": disks}

    doc = guarded(json, act)
    if json:
        emit_json(doc)
    else:
        for d in doc["disks"]:
            state = "[green]ok[/]" if not d["damaged"] else "[red]DAMAGED[/]"
            console.print(
                f"{doc['point']} {d['disk']}: {state}, {d['chunks']} chunks, "
                f"{human_bytes(d['bytes_verified'])} verified"
            )
            for r in d["damaged"]:
                console.print(f"  [red]damaged[/] bytes {r['start']}-{r['end']}: {r['reason']}")
    if not doc["ok"]:
        raise typer.Exit(EXIT_DAMAGE)


@app.command()
def check(
    read_data: bool = typer.Option(False, "--read-data", help="Also re-read every pack's bytes."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Check the whole vault: index vs packs, orphans, missing objects, (optionally) data."""
    report = guarded(
        json,
        lambda: run_check(context(vault, catalog, passphrase_file), read_data=read_data),
    )
    doc = report.to_dict()
    if json:
        emit_json(doc)
    else:
        console.print(
            f"{doc['packs']} packs, {doc['chunks']} chunks, {doc['points']} points, "
            f"{doc['records']} block records checked"
            + (f", {human_bytes(doc['bytes_read'])} read" if read_data else "")
        )
        for p in doc["problems"]:
            colour = "red" if p["severity"] == "error" else "yellow"
            console.print(f"[{colour}]{p['severity']}[/] {p['kind']} {p['object']}: {p['message']}")
        console.print("[green]vault is consistent[/]" if doc["ok"] else "[red]vault has errors[/]")
    if not doc["ok"]:
        raise typer.Exit(EXIT_DAMAGE)


@app.command()
def forget(
    point: str = typer.Argument(..., help="Point id (or a unique prefix)."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Delete a recovery point; its data is freed by the next `vmvault gc`."""
    point_id = guarded(json, lambda: forget_point(context(vault, catalog, passphrase_file), point))
    if json:
        emit_json({"forgotten": point_id})
    else:
        console.print(f"forgot {point_id}; run `vmvault gc` to free its data")


@app.command()
def prune(
    vm: str | None = typer.Option(None, "--vm", help="Only this VM (default: every VM)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; delete nothing."),
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Apply each VM's retention policy (GFS): delete the points it no longer keeps."""
    from vmvault.inventory import load_inventory

    doc = guarded(
        json,
        lambda: run_prune(
            context(vault, catalog, passphrase_file),
            load_inventory(inventory),
            vm_name=vm,
            dry_run=dry_run,
        ),
    )
    if json:
        emit_json(doc)
        return
    verb = "would delete" if dry_run else "deleted"
    for name, plan in doc["vms"].items():
        console.print(
            f"{name} (policy {plan['policy']}): keeps {len(plan['keep'])}, "
            f"{verb} {len(plan['prune'])}"
        )
        for point_id, reasons in plan["keep"].items():
            console.print(f"  keep   {point_id}  {', '.join(reasons)}")
        for point_id in plan["prune"]:
            console.print(f"  [red]delete[/] {point_id}")


@app.command()
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

    doc = guarded(json, act)
    if json:
        emit_json(doc)
        return
    _print_plan(doc)


def _print_plan(doc: dict[str, Any]) -> None:
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
            f"{_decimal_bytes(initial['data_bytes'])}\n[dim]{e['data_source']}[/]",
            _duration(initial["total_s"]),
            f"{initial['rate_mb_s']:g} MB/s\n[dim]{initial['rate_source']}[/]",
            _duration(incremental["total_s"]),
            f"{incremental['rate_mb_s']:g} MB/s\n[dim]{incremental['rate_source']}[/]",
            f"{_decimal_bytes(incremental['changed_bytes'])}\n"
            f"[dim]{incremental['changed_source']}[/]",
        )
    console.print(estimates)
    for pool, load in doc["pools"].items():
        budget = f" of {load['egress_mb_s']:g}" if load["egress_mb_s"] is not None else ""
        console.print(
            f"pool {pool}: peak {load['peak_mb_s']}{budget} MB/s, "
            f"demand up to {load['demand_peak_mb_s']} MB/s"
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
            console.print(f"pool {pool}: demand up to {before} MB/s -> {after} MB/s")
        console.print(f"staggered: {_fit(proposal['summary_after'])}")
        if proposal["applied"]:
            console.print(f"written to {proposal['applied']}: {len(proposal['start'])} start(s)")
        elif not proposal["start"]:
            console.print("every VM keeps its start")


def _time_of(moment: str | None, day: str) -> str:
    """HH:MM of an ISO instant, marked +1d (+2d) when it falls after ``day``."""
    if moment is None:
        return "-"
    from datetime import date

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


def _decimal_bytes(count: int) -> str:
    """GB and MB as the seed counts them (10^9, 10^6)."""
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.1f} s"
    return f"{minutes // 60}:{minutes % 60:02d} h"


@app.command()
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
    from vmvault.planning.cost import rows_to_csv
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

    report = guarded(json, act)
    if json:
        emit_json(report)
        return
    if csv:
        typer.echo(rows_to_csv(report["rows"]), nl=False)
        return
    table = Table(title=f"monthly cost ({report['currency']})")
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


@app.command()
def gc(
    grace: float = typer.Option(
        3600.0, "--grace", help="Never touch packs younger than this many seconds."
    ),
    repack_threshold: float = typer.Option(
        0.25, "--repack-threshold", help="Repack packs at least this dead (0-1)."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Collect even with damaged points or records (what only they used is freed).",
    ),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Free what no recovery point uses; safe while backups run (it defers its sweep)."""
    report = guarded(
        json,
        lambda: run_gc(
            context(vault, catalog, passphrase_file),
            grace=grace,
            repack_threshold=repack_threshold,
            force=force,
        ),
    )
    doc = report.to_dict()
    if json:
        emit_json(doc)
        return
    console.print(
        f"{doc['points']} points, {doc['live_chunks']} live chunks, {doc['packs']} packs: "
        f"{doc['deleted_packs']} deleted, {doc['repacked_packs']} repacked, "
        f"{human_bytes(doc['bytes_freed'])} freed"
    )
    if doc["deferred"]:
        console.print(f"[yellow]deferred[/]: {doc['deferred']}")
    for what in doc["damaged"]:
        console.print(f"[red]damaged[/] {what}: skipped (--force)")


@vault_app.command("reindex")
def reindex_cmd(
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Rebuild the chunk index from the packs and the catalog from the recovery points."""
    doc = guarded(json, lambda: reindex(context(vault, catalog, passphrase_file)))
    if json:
        emit_json(doc)
    else:
        console.print(
            f"indexed {doc['packs']} packs ({doc['chunks']} chunks); "
            f"catalog holds {doc['points']} points"
        )
        for key in doc["unreadable_packs"]:
            console.print(f"[red]unreadable[/] {key}")
        for point_id in doc["damaged_points"]:
            console.print(f"[red]damaged point[/] {point_id} (`vmvault forget` removes it)")


def _register_extra_commands() -> None:
    from vmvault.cli.commands import demo, jobs, protection, server, testdisk, vm

    app.command("demo")(demo.demo_cmd)
    app.add_typer(testdisk.app, name="testdisk")
    app.add_typer(vm.app, name="vm")
    app.add_typer(jobs.app, name="jobs")
    app.command("worker")(jobs.worker)
    app.command("scheduler")(jobs.scheduler)
    app.add_typer(protection.app, name="protection")
    vault_app.command("immutability")(protection.immutability)
    vault_app.command("soft-delete")(protection.soft_delete)
    app.command("serve")(server.serve)
    app.add_typer(server.token_app, name="token")
    app.add_typer(server.alerts_app, name="alerts")


_register_extra_commands()


def run() -> None:
    app()
