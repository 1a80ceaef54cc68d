"""Instant restore: a VM's snapshot images kept beside its disks for a few days.

Azure keeps a recovery point's snapshots for 1 to 5 days ("instant restore"): a restore from
them needs no transfer from the vault. Here, after a backup whose provider copied the disks
(reflink or copy), each raw image is kept as
``<disk's directory>/.vmvault-instant/<point id>/<disk name>`` instead of being removed, for
the policy's ``instant_restore_days``. A restore that finds one copies it locally, then
proves it against the point's block records (every chunk re-hashed with the vault's key),
and uses the vault only if the copy does not match.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from vmvault.disks.source import RawDisk
from vmvault.model.point import RecoveryPoint
from vmvault.vault.format import ZERO_ID, DiskManifest
from vmvault.vault.vault import Vault

INSTANT_DIR = ".vmvault-instant"


def _place(disk_path: str, point_id: str, name: str) -> Path:
    return Path(disk_path).parent / INSTANT_DIR / point_id / name


def keep(point: RecoveryPoint, disk_paths: dict[str, str], images: Sequence[str]) -> list[str]:
    """Move the raw snapshot images of ``point`` into the instant-restore store."""
    kept = []
    for disk, image in zip(point["disks"], images, strict=True):
        if disk.get("format", "raw") != "raw":
            continue  # a qcow2 file's bytes are not the guest's: not checkable chunk by chunk
        target = _place(disk_paths[disk["name"]], point["id"], disk["name"])
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(image, target)  # same file system as the snapshot: a rename
        kept.append(str(target))
    return kept


def find(point: RecoveryPoint, disk_name: str) -> Path | None:
    config = {d["name"]: d for d in point.get("vm_config", {}).get("disks", [])}
    if disk_name not in config:
        return None
    path = _place(config[disk_name]["path"], point["id"], disk_name)
    return path if path.is_file() else None


def matches(vault: Vault, manifest: DiskManifest, image: Path) -> bool:
    """Whether ``image`` holds exactly the disk the manifest describes (keyed chunk ids)."""
    with RawDisk.open(image) as disk:
        if disk.size != manifest.size:
            return False
        buffer = bytearray(manifest.block_size)
        for b, record_id in enumerate(manifest.records):
            start = b * manifest.block_size
            length = min(manifest.block_size, manifest.size - start)
            view = memoryview(buffer)[:length]
            disk.read_into(view, start)
            if record_id == ZERO_ID:
                if view.tobytes().count(0) != length:
                    return False
                continue
            found = vault.records([record_id])[record_id]
            if isinstance(found, Exception):
                return False
            for c, chunk_id in enumerate(found):
                piece = view[c * manifest.chunk_size : (c + 1) * manifest.chunk_size]
                if chunk_id == ZERO_ID:
                    if piece.tobytes().count(0) != len(piece):
                        return False
                elif vault.keys.chunk_id(piece) != chunk_id:
                    return False
    return True


def expire(disk_paths: Sequence[str], keep_days: int, now: datetime) -> list[str]:
    """Remove instant-restore images older than ``keep_days`` (by their point's time)."""
    removed = []
    for directory in {Path(p).parent / INSTANT_DIR for p in disk_paths}:
        if not directory.is_dir():
            continue
        for point_dir in directory.iterdir():
            created = datetime.strptime(point_dir.name[:15], "%Y%m%dT%H%M%S").replace(
                tzinfo=now.tzinfo
            )
            if now - created > timedelta(days=keep_days):
                shutil.rmtree(point_dir, ignore_errors=True)
                removed.append(point_dir.name)
    return removed
