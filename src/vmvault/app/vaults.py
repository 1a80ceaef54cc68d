"""The vault as a whole: create it, check it, collect its garbage, rebuild its index and
the catalog from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmvault.app.context import Context
from vmvault.app.points import read_points
from vmvault.app.records import report_damaged_points, report_lost_packs
from vmvault.backends.base import innermost
from vmvault.backends.cache import ObjectCache, cache_enabled, cache_limit, cache_root
from vmvault.backends.url import is_directory_vault, open_backend
from vmvault.engine.check import CheckReport, Problem, check_vault
from vmvault.engine.gc import GcReport, collect_garbage
from vmvault.errors import UsageError
from vmvault.vault import store_retention
from vmvault.vault.vault import Vault

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog


def init_vault(ctx: Context, **options: Any) -> Vault:
    backend = ctx.backend()
    if not is_directory_vault(ctx.vault_path):
        # An object store has no directory to check: the bucket or container must exist
        # (vmvault never creates one), and Vault.init refuses a prefix that holds a config.
        check_bucket: Callable[[], None] | None = getattr(innermost(backend), "check_bucket", None)
        if check_bucket is not None:
            check_bucket()
        return Vault.init(backend, ctx.passphrase(confirm=True), **options)
    root = Path(ctx.vault_path).absolute()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not backend.exists("config"):
        raise UsageError(f"{root} is not empty and not a vault; choose an empty directory")
    return Vault.init(backend, ctx.passphrase(confirm=True), **options)


def run_check(ctx: Context, *, read_data: bool = False) -> CheckReport:
    """Check the whole vault; damaged points and lost packs also raise their alerts."""
    with ctx.session("check") as vault:
        report = check_vault(vault, read_data=read_data)
        damaged = {p.object: p.message for p in report.problems if p.kind == "point_unreadable"}
        catalog = ctx.catalog()
        _check_catalog(catalog, vault, report)
        report_damaged_points(catalog, vault, damaged)
        report_lost_packs(catalog, vault)
        return report


def _check_catalog(catalog: Catalog, vault: Vault, report: CheckReport) -> None:
    """Points the catalog recorded that the vault no longer has: deleted behind vmvault's
    back (vmvault's own deletions update the catalog)."""

    rows = catalog.points(vault.config.vault_id)  # before the vault's listing: a point is
    present = set(vault.point_ids())  # committed to the vault before it is recorded
    gone = {row.id for row in rows} - present
    if gone:  # still recorded? A deletion updates the vault first, then the catalog
        gone &= {row.id for row in catalog.points(vault.config.vault_id)}
    for row in rows:
        if row.id in gone:
            report.problems.append(
                Problem(
                    "error",
                    "point_missing",
                    row.id,
                    f"recovery point of {row.vm} is recorded but missing from the vault "
                    "(if it was deleted on purpose, `vmvault vault reindex` forgets it)",
                )
            )


def run_gc(ctx: Context, **options: Any) -> GcReport:
    """Collect garbage (see engine/gc.py); takes no lock: it looks for them. Then, where
    the store enforces immutability too, extend its retention of every object the vault
    still has (vault/store_retention.py): after the collection, so that what it deleted is
    not extended, and even when it failed (a damaged vault must not lose the store's
    protection for it).

    ``force=True`` collects even when a point or block record is damaged: what only the
    damaged objects used is then freed too."""
    vault = ctx.open_vault()
    try:
        report = collect_garbage(vault, **options)
    finally:
        refreshed = store_retention.refresh(vault, vault.store_retention)  # never raises
    report.store_retention = refreshed.to_dict() if refreshed else None
    return report


def reindex(ctx: Context) -> dict[str, Any]:
    """Rebuild the chunk index from the packs' own headers, and the catalog from the points."""
    vault = ctx.open_vault(load_index=False)
    packs, unreadable = vault.rebuild_index()
    listing = read_points(vault)
    count = ctx.catalog().rebuild(vault.config.vault_id, listing.points)
    report_damaged_points(ctx.catalog(), vault, listing.damaged)
    return {
        "packs": packs,
        "chunks": len(vault.index),
        "unreadable_packs": unreadable,
        "points": count,
        "damaged_points": sorted(listing.damaged),
    }


def local_cache(
    location: str | None, *, clear: bool = False, enabled: bool | None = None
) -> dict[str, Any]:
    """The local cache of object-store vaults (backends/cache.py): where, its bound, what it
    holds per vault; ``clear`` deletes the copies (of ``location``'s vault only, if given).

    No Context: it opens no vault and makes no request (the vault of a location is the one
    whose copies were last read from it, noted beside them), so it works with the store out
    of reach. ``enabled`` None: as ``$VMVAULT_NO_CACHE`` says."""
    cache = ObjectCache(cache_root(), cache_limit())
    doc: dict[str, Any] = {"path": str(cache.root)}
    selected: list[str] | None = None
    if location:
        if is_directory_vault(location):
            doc["note"] = "a directory vault is read directly: it has no cache"
            selected = []
        else:
            where = open_backend(location, cache=False).describe()  # the URL as copies note it
            selected = [u.vault_id for u in cache.usage() if u.location == where]
        doc["location"] = location
    if clear:
        entries, size = cache.clear(selected)
        doc["cleared"] = {"entries": entries, "size": size}
    everything = cache.usage()
    doc.update(
        enabled=cache_enabled() if enabled is None else enabled,
        limit=cache.limit,
        size=sum(u.size for u in everything),
        entries=sum(u.entries for u in everything),
        vaults=[asdict(u) for u in everything if selected is None or u.vault_id in selected],
    )
    return doc
