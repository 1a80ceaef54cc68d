"""Recovery points as use cases see them: listed (damaged ones apart), named by a prefix
or ``latest``, and forgotten."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmvault.app.context import Context
from vmvault.app.point_ref import resolve_point
from vmvault.app.records import raise_alert, report_damaged_points
from vmvault.backends.base import ObjectRetained
from vmvault.model.point import RecoveryPoint
from vmvault.protection import check_may_delete
from vmvault.vault.replica import note_pruned
from vmvault.vault.vault import Vault


@dataclass
class PointListing:
    """The readable points of a vault (oldest first) and the damaged ones, with why;
    ``all_ids``: every point id of the vault, also those a filter left out."""

    points: list[RecoveryPoint]
    damaged: dict[str, str]
    all_ids: list[str]
    # Each verified point's last verify (catalog.verifications.verified_doc), by point id.
    verified: dict[str, dict[str, Any]] = field(default_factory=dict)

    def damaged_docs(self) -> list[dict[str, str]]:
        return [{"id": pid, "error": message} for pid, message in sorted(self.damaged.items())]


def read_points(vault: Vault) -> PointListing:
    points, damaged = vault.read_points()
    ids = sorted([p["id"] for p in points] + list(damaged))
    return PointListing(points, {pid: exc.message for pid, exc in damaged.items()}, ids)


def list_points(ctx: Context, vm: str | None = None) -> PointListing:
    """Points from the vault itself (the catalog may lag a vault copied from elsewhere),
    with their last verify from the catalog.

    Damaged point objects are listed apart (their VM is unknown) and raise an alert."""
    from vmvault.catalog.verifications import last_verified_docs  # SQLAlchemy: on first use

    vault = ctx.open_vault(load_index=False)
    listing = read_points(vault)
    catalog = ctx.catalog()
    report_damaged_points(catalog, vault, listing.damaged)
    mine = [p for p in listing.points if vm is None or p["vm"] == vm]
    verified = last_verified_docs(catalog, vault.config.vault_id)
    return PointListing(mine, listing.damaged, listing.all_ids, verified)


def forget_point(ctx: Context, point_ref: str) -> str:
    """Delete a recovery point; its data goes at the next garbage collection."""

    vault = ctx.open_vault(load_index=False)
    point_id = resolve_point(vault, point_ref)
    check_may_delete(vault)
    point = vault.readable_point(point_id)
    vm = point["vm"] if point is not None else None  # a damaged point can be forgotten too
    ctx.catalog().forget_points(vault.config.vault_id, [point_id])  # first: see run_prune
    try:
        vault.delete_point(point_id)
    except ObjectRetained:
        if point is not None:  # the store keeps it (a WORM store): so does the catalog
            ctx.catalog().record_point(vault.config.vault_id, point)
        raise
    note_pruned(vault, [point_id])  # in a copy: replication must not bring it back
    raise_alert(
        ctx,
        vault,
        "backup_data_deleted",
        f"recovery point {point_id} of {vm or 'an unknown VM (damaged)'} was deleted",
        vm=vm,
        details={"point": point_id},
    )
    return point_id
