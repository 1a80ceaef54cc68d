"""Which earlier point each disk of a new backup is compared with."""

from __future__ import annotations

from collections.abc import Sequence

from vmvault.errors import CorruptObject, ObjectMissing, PointNotFound
from vmvault.vault.format import DiskManifest
from vmvault.vault.vault import Vault


def parent_manifests(
    vault: Vault, vm: str, names: Sequence[str]
) -> dict[str, tuple[str, DiskManifest]]:
    """For each disk name, the newest committed point of ``vm`` holding it, and its manifest.

    One pass over the points, newest first; a damaged manifest is skipped (the disk then
    compares against an older point, or none).
    """
    found: dict[str, tuple[str, DiskManifest]] = {}
    wanted = set(names)
    for point_id in reversed(vault.point_ids()):
        if wanted <= found.keys():
            break
        try:
            point = vault.get_point(point_id)
        except (CorruptObject, ObjectMissing, PointNotFound):
            continue  # a damaged point is no parent; `check` and the listing name it
        if point.get("vm") != vm:
            continue
        for disk in point["disks"]:
            if disk["name"] in wanted and disk["name"] not in found:
                try:
                    found[disk["name"]] = (point_id, vault.get_manifest(disk["manifest"]))
                except (CorruptObject, ObjectMissing):
                    continue  # damaged or lost: compare with an older point, or none
    return found
