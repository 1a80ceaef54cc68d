"""Files inside a recovery point, without restoring its disk: list them, copy them out,
stream them as tar (the dashboard's downloads), or serve them as a mount (files/mount.py).

A disk is opened through ``PointReader`` (the NBD export's reader), so only the vault
blocks that hold the file systems' metadata and the wanted files are ever fetched, each
authenticated and re-hashed as a restore's are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from vmvault.app.context import Context
from vmvault.app.points import resolve_point
from vmvault.engine.restore import point_disk
from vmvault.errors import EXIT_DAMAGE, UsageError, VmvaultError
from vmvault.export.reader import DEFAULT_CACHE_BYTES, PointReader
from vmvault.files.browse import DiskBrowser, split_path
from vmvault.files.diskfile import DiskFile
from vmvault.files.extract import Extractor, open_target

MiB = 1024 * 1024


class FilesDamaged(VmvaultError):
    """Some files could not be copied: their bytes are damaged or missing in the vault."""

    code = "files_damaged"
    exit_code = EXIT_DAMAGE


@dataclass
class PointDisk:
    """One disk of a point, open for reading its files."""

    point_id: str
    disk: str
    reader: PointReader
    browser: DiskBrowser

    def blocks_fetched(self) -> int:
        return int(self.reader.stats["blocks_fetched"])


@contextmanager
def open_point_disk(
    ctx: Context,
    point_ref: str,
    *,
    disk: str | None = None,
    vm: str | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Iterator[PointDisk]:
    """The disk of a point (a unique id prefix, or ``latest`` of ``vm``), its volumes
    found; held under a read lock so garbage collection deletes nothing it reads."""
    with ctx.session("files") as vault:
        point_id = resolve_point(vault, point_ref, vm)
        entry = point_disk(vault, vault.get_point(point_id), disk)
        manifest = vault.get_manifest(entry["manifest"])
        reader = PointReader(vault, manifest, name=entry["name"], cache_bytes=cache_bytes)
        try:
            label = f"disk {entry['name']} of point {point_id}"
            disk_file = cast(BinaryIO, DiskFile(reader))  # what the parsers read: a binary file
            browser = DiskBrowser(disk_file, manifest.size, label=label)
            yield PointDisk(point_id, entry["name"], reader, browser)
        finally:
            reader.close()


def list_files(
    ctx: Context, point_ref: str, path: str = "/", *, disk: str | None = None, vm: str | None = None
) -> dict[str, Any]:
    """A directory's entries (or one file's), or at ``/`` the disk's volumes."""
    started = time.monotonic()
    with open_point_disk(ctx, point_ref, disk=disk, vm=vm) as pd:
        doc: dict[str, Any] = {"point": pd.point_id, "disk": pd.disk}
        if not split_path(path):
            doc.update(path="/", volumes=pd.browser.describe_volumes())
        else:
            shown, kind, entries = pd.browser.listing(path)
            doc.update(path=shown, kind=kind, entries=[e.as_dict() for e in entries])
        doc.update(blocks_read=pd.blocks_fetched(), seconds=round(time.monotonic() - started, 3))
        return doc


def get_files(
    ctx: Context,
    point_ref: str,
    paths: Sequence[str],
    to: str,
    *,
    disk: str | None = None,
    vm: str | None = None,
    owners: bool | None = None,
) -> dict[str, Any]:
    """Copy ``paths`` (files or whole directories) into the directory ``to``, each under
    its own name; nothing that exists there is overwritten."""
    if not paths:
        raise UsageError("name at least one path to copy")
    started = time.monotonic()
    with open_point_disk(ctx, point_ref, disk=disk, vm=vm) as pd:
        located = []
        for path in paths:
            where = pd.browser.locate(path)
            if where.volume is None:
                raise UsageError("/ is the list of volumes: name a volume or a path in one")
            if where.node is None:  # a volume itself: its file system's root
                where.node = pd.browser.file_system(where.volume).root
            located.append(where)
        names = [w.path.rsplit("/", 1)[-1] for w in located]
        if len(set(names)) != len(names):
            raise UsageError("two of the paths have the same name: copy them one at a time")
        fd = open_target(to)
        try:
            extractor = Extractor(fd, owners=owners)
            for name in names:
                extractor.refuse_existing(name, f"{to.rstrip('/')}/{name}")
            for where, name in zip(located, names, strict=True):
                assert where.node is not None
                extractor.extract(where.node, name, where.path, to)
        finally:
            os.close(fd)
        report = extractor.report
        doc: dict[str, Any] = {
            "point": pd.point_id,
            "disk": pd.disk,
            "to": to,
            "paths": [w.path for w in located],
            **report.as_dict(),
            "blocks_read": pd.blocks_fetched(),
            "disk_blocks": -(-pd.reader.size // pd.reader.manifest.block_size),
            "seconds": round(time.monotonic() - started, 3),
        }
        return doc


def damage_of(doc: dict[str, Any]) -> FilesDamaged | None:
    """The error a copy that met damaged files ends with, after its report."""
    failed = doc.get("failed") or []
    if not failed:
        return None
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return FilesDamaged(f"{failed[0]['path']} was not copied: {failed[0]['reason']}{more}")
