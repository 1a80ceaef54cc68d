"""Human output of the vault commands: init, check, gc, vault reindex, vault cache."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from vmvault.cli.output import console, human_bytes


def print_created(doc: dict[str, Any]) -> None:
    console.print(f"created vault {doc['vault_id']} at {escape(doc['vault'])}", soft_wrap=True)
    console.print(f"[yellow]{escape(doc['warning'])}[/]", soft_wrap=True)


def print_checked(doc: dict[str, Any], read_data: bool) -> None:
    """What a check read, each problem found, and the verdict."""
    console.print(
        f"{doc['packs']} packs, {doc['chunks']} chunks, {doc['points']} points, "
        f"{doc['records']} block records checked"
        + (f", {human_bytes(doc['bytes_read'])} read" if read_data else ""),
        soft_wrap=True,
    )
    for p in doc["problems"]:
        colour = "red" if p["severity"] == "error" else "yellow"
        console.print(
            f"[{colour}]{p['severity']}[/] {p['kind']} {p['object']}: {p['message']}",
            soft_wrap=True,
        )
    console.print("[green]vault is consistent[/]" if doc["ok"] else "[red]vault has errors[/]")


def print_collected(doc: dict[str, Any]) -> None:
    """A garbage collection: what it deleted and repacked, or why it deferred its sweep."""
    console.print(
        f"{doc['points']} points, {doc['live_chunks']} live chunks, {doc['packs']} packs: "
        f"{doc['deleted_packs']} deleted, {doc['repacked_packs']} repacked, "
        f"{human_bytes(doc['bytes_freed'])} freed",
        soft_wrap=True,
    )
    if doc["deferred"]:
        console.print(f"[yellow]deferred[/]: {doc['deferred']}", soft_wrap=True)
    for what in doc["damaged"]:
        console.print(f"[red]damaged[/] {what}: skipped (--force)", soft_wrap=True)
    for what in doc.get("retained", []):
        console.print(
            f"[yellow]retained[/] {escape(what)}: left for a later collection", soft_wrap=True
        )
    if leftovers := doc.get("leftovers_removed"):
        console.print(
            f"{len(leftovers)} temporary file(s) of interrupted writes removed", soft_wrap=True
        )
    store = doc.get("store_retention")
    if store:
        line = (
            f"store retention ({store['mode']}, {store['days']} days): {store['checked']} "
            f"objects checked, {store['extended']} extended"
        )
        console.print(escape(line), soft_wrap=True)
        if store["problem"]:
            console.print(
                f"[yellow]warning[/]: retention not extended: {escape(store['problem'])}",
                soft_wrap=True,
            )


def print_reindexed(doc: dict[str, Any]) -> None:
    """A reindex: what it indexed, and the packs and points it could not read."""
    console.print(
        f"indexed {doc['packs']} packs ({doc['chunks']} chunks); "
        f"catalog holds {doc['points']} points",
        soft_wrap=True,
    )
    for key in doc["unreadable_packs"]:
        console.print(f"[red]unreadable[/] {key}", soft_wrap=True)
    for point_id in doc["damaged_points"]:
        console.print(
            f"[red]damaged point[/] {point_id} (`vmvault forget` removes it)", soft_wrap=True
        )


def print_replicated(doc: dict[str, Any]) -> None:
    """A replication: what crossed, what the copy had, what could not be copied."""
    console.print(
        f"{len(doc['copied'])} point(s) copied to {doc['destination']} "
        f"({doc['present']} already there): {doc['packs']} packs, "
        f"{human_bytes(doc['bytes'])} sent, {doc['verified_chunks']} chunks read back, "
        f"{doc['seconds']:.1f} s",
        soft_wrap=True,
    )
    if doc["adopted"]:
        console.print(
            f"{doc['adopted']} pack(s) of an interrupted replication reused", soft_wrap=True
        )
    for point_id, why in doc["skipped"].items():
        console.print(f"[red]not copied[/] {point_id}: {why}", soft_wrap=True)


def print_cache(doc: dict[str, Any]) -> None:
    """The local cache: where, its bound and use, per vault; what --clear deleted."""
    state = "" if doc["enabled"] else " (disabled)"
    console.print(
        f"local cache {doc['path']}{state}: {human_bytes(doc['size'])} in {doc['entries']} "
        f"copies, limit {human_bytes(doc['limit'])}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if "note" in doc:
        console.print(doc["note"], highlight=False, markup=False, soft_wrap=True)
    for v in doc["vaults"]:
        console.print(
            f"  vault {v['vault_id']} ({v['location'] or 'location unknown'}): "
            f"{human_bytes(v['size'])} in {v['entries']} copies",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if cleared := doc.get("cleared"):
        console.print(
            f"cleared {cleared['entries']} copies ({human_bytes(cleared['size'])})",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
