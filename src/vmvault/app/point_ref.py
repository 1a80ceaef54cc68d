"""A recovery point named on a command line: its id, a unique prefix, or ``latest``.

Apart from app/points.py so that what only reads a point (export, files, restore) does not
import the protection rules and the catalog that listing and forgetting points need.
"""

from __future__ import annotations

from vmvault.errors import UsageError
from vmvault.point_refs import AmbiguousPoint, latest_is_ambiguous, match_point
from vmvault.vault.vault import Vault


def resolve_point(vault: Vault, ref: str, vm: str | None = None) -> str:
    """A point id, a unique prefix of one, or ``latest``: the newest readable point of
    ``vm``, or of the vault's one VM (a damaged point is nobody's latest). With points of
    several VMs and no ``vm``, ``latest`` names no single point and is refused: taken as
    the newest of any VM it would restore, export or forget another VM's point."""
    ids = vault.point_ids()
    if ref != "latest":
        return match_point(ids, ref)
    owners = {i: p["vm"] for i in ids if (p := vault.readable_point(i)) is not None}
    if vm is None and len(vms := sorted(set(owners.values()))) > 1:
        raise AmbiguousPoint(latest_is_ambiguous(vms))
    candidates = [i for i in ids if i in owners and (vm is None or owners[i] == vm)]
    if not candidates:
        raise UsageError("the vault has no recovery points" + (f" for {vm}" if vm else ""))
    return candidates[-1]
