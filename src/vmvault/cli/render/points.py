"""Human output of the point commands: backup, list, restore, verify, forget, prune."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from vmvault.cli.output import console, human_bytes
from vmvault.cli.render.drill import print_drill
from vmvault.cli.render.tables import SHORT_LEVELS, fitting
from vmvault.point_refs import short_refs
from vmvault.units import human_rate


def print_point(point: Mapping[str, Any]) -> None:
    """A backup's summary: per disk what was read, changed, new and written, and how fast it
    was read (the bytes read, not the disk's size: holes and unchanged chunks cost nothing)."""
    title = f"recovery point {point['id']} ({point['type']}, {point['vm']})"
    # no padding: the box's blank separator keeps columns apart, and eight columns of
    # sizes then fit 80 terminal columns without a figure cut short
    table = Table(box=box.SIMPLE_HEAD, padding=0)
    table.add_column("disk", overflow="fold")
    for col in ("size", "read", "changed", "new", "written", "time", "read rate"):
        table.add_column(col, justify="right", no_wrap=True)
    for d in point["disks"]:
        st = d["stats"]
        table.add_row(
            d["name"],
            human_bytes(d["size"]),
            human_bytes(st["read"]),
            human_bytes(st["changed"]),
            human_bytes(st["new"]),
            human_bytes(st["stored"]),
            f"{st['seconds']:.2f} s",
            human_rate(st["read"], st["seconds"]),
        )
    # a line of its own: as the table's title it wrapped to the table's width, mid-name
    console.print(title, highlight=False, soft_wrap=True)
    console.print(table)
    for d in point["disks"]:
        name, fmt = d["name"], d.get("format", "raw")
        if d.get("format_from") == "detected" and fmt != "raw":  # raw: no header, as ever
            console.print(
                f"{name}: read as {fmt}, the format its header names (none declared)",
                soft_wrap=True,
            )
        elif d.get("format_from") == "forced":
            console.print(
                f"{name}: read as {fmt}, as forced (its header not looked at)", soft_wrap=True
            )
    for d in point.get("excluded", []):
        console.print(f"excluded: {d['name']} ({d['reason']})", soft_wrap=True)
    level = point["consistency"]
    console.print(
        f"consistency: [bold]{level['level']}[/] ({level.get('reason', '')})", soft_wrap=True
    )
    if requests := point.get("requests"):
        ops = ", ".join(f"{n} {op}" for op, n in requests["ops"].items())
        console.print(
            f"requests to the store: {requests['total']} ({ops}); "
            f"{human_bytes(requests['bytes_in'])} in, {human_bytes(requests['bytes_out'])} out",
            highlight=False,
            soft_wrap=True,
        )
    if drill := point.get("drill"):
        print_drill(drill)


# Where the full table's rows do not fit the terminal, `list` leaves out the disks' size and
# changed bytes and abbreviates, so that a row stays one line (at 80 columns for VM and disk
# names of up to ~15 characters) instead of splitting words and numbers.
_SHORT_TYPES = {"incremental": "incr"}


def print_points(
    summaries: list[dict[str, Any]],
    damaged: list[dict[str, Any]],
    known_ids: list[str],
    vm: str | None = None,
) -> None:
    """The recovery points (their summaries), then the points that could not be read.

    The id column shows each id's shortest prefix that no other of ``known_ids`` starts
    with (what `restore` and `forget` take), never cut to fit the terminal. No point at all
    is a line saying so, naming the ``vm`` whose points were asked for."""
    if not summaries:
        wanted = f" (vm {escape(vm)})" if vm else ""
        console.print(f"no recovery points{wanted}", highlight=False, soft_wrap=True)
    else:
        refs = short_refs(known_ids + [p["id"] for p in summaries])
        table = fitting(lambda wide: _points_table(summaries, refs, wide=wide), console.width)
        console.print(table)
    for d in damaged:
        console.print(f"[red]damaged[/] point {d['id']}: {d['error']}", soft_wrap=True)


def _points_table(summaries: list[dict[str, Any]], refs: dict[str, str], *, wide: bool) -> Table:
    table = Table(title="recovery points", box=box.SIMPLE_HEAD, padding=0)
    table.add_column("id", no_wrap=True, min_width=max(map(len, refs.values()), default=2))
    table.add_column("vm", overflow="fold")
    table.add_column("type", no_wrap=True)
    table.add_column("consistency" if wide else "cons.", no_wrap=True)
    table.add_column("disks", overflow="fold")
    for col in ("size", "changed", "written") if wide else ("written",):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("last verified" if wide else "verified", no_wrap=True)
    for p in summaries:
        figures = (p["size"], p["changed"], p["stored"]) if wide else (p["stored"],)
        table.add_row(
            refs[p["id"]],
            p["vm"],
            p["type"] if wide else _SHORT_TYPES.get(p["type"], p["type"]),
            p["consistency"] if wide else SHORT_LEVELS.get(p["consistency"], p["consistency"]),
            ", ".join(p["disks"]),
            *map(human_bytes, figures),
            last_verified(p.get("last_verified"), year=wide),
        )
    return table


def last_verified(doc: dict[str, Any] | None, *, year: bool = True) -> str:
    """A point's last verify in a table cell: its time (UTC, to the minute; without the
    year for a narrow table) and ok or DAMAGED, or never."""
    if doc is None:
        return "never"
    when = doc["at"][0 if year else 5 : 16].replace("T", " ")
    return f"{when} [green]ok[/]" if doc["ok"] else f"{when} [red]DAMAGED[/]"


def print_restored(doc: dict[str, Any]) -> None:
    """A disk restore: size, bytes verified, speed (of the data read back and verified, not
    the disk's size: holes are not read), and the damaged ranges it skipped."""
    rate = human_rate(doc["bytes_verified"], doc["seconds"])
    source = f" of {doc['vm']} (point {doc['point']})" if doc.get("point") else ""
    console.print(  # soft_wrap: longer than the terminal, it wraps there, not mid-figure
        escape(
            f"restored disk {doc['disk']}{source} to {doc['target']}: "
            f"{human_bytes(doc['size'])}, {human_bytes(doc['bytes_verified'])} verified, "
            f"{doc['seconds']:.2f} s ({rate})"
        ),
        highlight=False,
        soft_wrap=True,
    )
    _print_damaged(doc["damaged"])


def print_verified(doc: dict[str, Any]) -> None:
    """A verify: per disk, named by its point and VM, ok or damaged (with the damaged
    ranges); a line longer than the terminal is wrapped by it, the point id never cut."""
    for d in doc["disks"]:
        state = "[green]ok[/]" if not d["damaged"] else "[red]DAMAGED[/]"
        disk = escape(" ".join(name for name in (d.get("vm"), d["disk"]) if name))
        console.print(
            f"{doc['point']} {disk}: {state}, {d['chunks']} chunks, "
            f"{human_bytes(d['bytes_verified'])} verified",
            highlight=False,
            soft_wrap=True,
        )
        _print_damaged(d["damaged"], indent="  ")


def _print_damaged(ranges: list[dict[str, Any]], indent: str = "") -> None:
    """The byte ranges a restore or verify could not read back, one a line."""
    for r in ranges:
        console.print(
            f"{indent}[red]damaged[/] bytes {r['start']}-{r['end']}: {r['reason']}", soft_wrap=True
        )


def print_forgotten(doc: dict[str, Any]) -> None:
    console.print(f"forgot {doc['forgotten']}; run `vmvault gc` to free its data", soft_wrap=True)


def print_pruned(doc: dict[str, Any], dry_run: bool) -> None:
    """Per VM the points its policy keeps (and why) and those it deletes (or would)."""
    verb = "would delete" if dry_run else "deleted"
    for name, plan in doc["vms"].items():
        console.print(
            f"{name} (policy {plan['policy']}): keeps {len(plan['keep'])}, "
            f"{verb} {len(plan['prune'])}",
            soft_wrap=True,
        )
        for point_id, reasons in plan["keep"].items():
            console.print(f"  keep   {point_id}  {', '.join(reasons)}", soft_wrap=True)
        for point_id in plan["prune"]:
            console.print(f"  [red]delete[/] {point_id}", soft_wrap=True)
        for point_id in plan.get("retained", []):
            console.print(
                f"  [yellow]kept[/]   {point_id}  the store retains it: pruned later",
                soft_wrap=True,
            )
