"""A recovery point named on a command line: its id, a unique prefix, or ``latest``.

Apart from app/points.py so that what only reads a point (export, files, restore) does not
import the protection rules and the catalog that listing and forgetting points need.
"""

from __future__ import annotations

from vmvault.errors import PointNotFound, UsageError
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
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise PointNotFound(f"no recovery point {ref!r} in this vault")
    raise UsageError(f"{ref!r} names {len(matches)} points; give more of the id")
