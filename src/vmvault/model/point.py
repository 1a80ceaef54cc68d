"""A recovery point as stored in the vault (docs/FORMAT.md, "Recovery points") and as the
CLI's ``--json`` and the API show it: JSON, typed. A point object never changes once
written, so these are plain typed dicts: what is read is what was written, no conversion."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class DiskStatsDoc(TypedDict):
    """One disk's transfer in a backup (``engine.backup.DiskStats``), in bytes and seconds."""

    size: int
    allocated: int
    read: int
    zero: int
    unchanged: int
    deduplicated: int
    skipped: int
    new: int
    stored: int
    records_new: int
    seconds: float
    changed: int


class DiskEntry(TypedDict):
    """A disk of a point: its block map (``manifest``) and where it came from."""

    name: str
    role: NotRequired[str]  # "os" or "data"; older points lack it (data)
    format: NotRequired[str]  # the image format to restore; older points lack it (raw)
    # How ``format`` was settled: "detected" from the image's header, "declared" and checked
    # against it, "forced" (declared, header not looked at); older points lack it.
    format_from: NotRequired[str]
    source: str
    size: int
    parent: str | None  # the point whose manifest this disk's backup compared with
    manifest: str
    stats: DiskStatsDoc


class ExcludedDisk(TypedDict):
    """A disk of the VM that is not in the point (a temporary disk), and why."""

    name: str
    role: str
    path: str
    reason: str


class ConsistencyDoc(TypedDict):
    level: str  # "application", "file-system" or "crash"
    reason: str


class RecoveryPoint(TypedDict):
    id: str
    vm: str
    created: str  # ISO 8601, UTC
    completed: NotRequired[str | None]
    parent: str | None  # the newest point any of its disks was compared with
    type: str  # "full" or "incremental"
    consistency: ConsistencyDoc
    disks: list[DiskEntry]
    excluded: NotRequired[list[ExcludedDisk]]
    vm_config: NotRequired[dict[str, Any]]  # the VM's inventory entry at backup time
    meta: NotRequired[dict[str, Any]]  # what the snapshot and quiesce steps did
