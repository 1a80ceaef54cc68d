"""A recovery point named on a command line: its id, a unique prefix, or ``latest``.

Apart from app/points.py so that what only reads a point (export, files, restore) does not
import the protection rules and the catalog that listing and forgetting points need.
"""

from __future__ import annotations

from vmvault.errors import UsageError
from vmvault.point_refs import match_point
from vmvault.vault.vault import Vault


def resolve_point(vault: Vault, ref: str, vm: str | None = None) -> str:
    """A point id, a unique prefix of one, or ``latest`` (of ``vm`` if given; a damaged
    point is nobody's latest)."""
    ids = vault.point_ids()
    if ref == "latest":
        candidates = ids
        if vm is not None:
            candidates = [
                i for i in ids if (p := vault.readable_point(i)) is not None and p["vm"] == vm
            ]
        if not candidates:
            raise UsageError("the vault has no recovery points" + (f" for {vm}" if vm else ""))
        return candidates[-1]
    return match_point(ids, ref)
