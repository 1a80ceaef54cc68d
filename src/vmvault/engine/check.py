"""Whole-vault check: structure always, every byte with ``read_data``.

Structure: every index object opens; every pack the index names exists and its own header
agrees with the index; every point opens, its manifests open, its block records are
readable and every chunk they name is indexed. Packs no index names are reported as
orphans (left by an interrupted backup; the next backup adopts them). With ``read_data``
every blob of every pack is decrypted and re-hashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import blake3

from vmvault.backends.base import innermost
from vmvault.errors import CorruptObject, ObjectMissing, PointNotFound
from vmvault.vault import keyring
from vmvault.vault.documents import (
    AAD_PROTECTION,
    AAD_SETTINGS,
    PROTECTION_PREFIX,
    SETTINGS_KEY,
    protection_key,
)
from vmvault.vault.format import ZERO_ID, PackEntry
from vmvault.vault.index import Location
from vmvault.vault.packs import pack_key
from vmvault.vault.vault import Vault


@dataclass
class Problem:
    severity: str  # "error": data is damaged or missing; "warning": nothing committed is hurt
    kind: str
    object: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "kind": self.kind,
            "object": self.object,
            "message": self.message,
        }


@dataclass
class CheckReport:
    packs: int = 0
    index_objects: int = 0
    chunks: int = 0
    points: int = 0
    records: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "packs": self.packs,
            "index_objects": self.index_objects,
            "chunks": self.chunks,
            "points": self.points,
            "records": self.records,
            "bytes_read": self.bytes_read,
            "problems": [p.to_dict() for p in self.problems],
        }


def check_vault(vault: Vault, *, read_data: bool = False) -> CheckReport:
    report = CheckReport()
    error = report.problems.append
    indexed: dict[bytes, dict[tuple[int, bytes], PackEntry]] = {}
    for key in vault.backend.list("index/"):
        report.index_objects += 1
        try:
            for pack_id, entries in vault.read_index_object(key):
                # The same pack in two index objects (an adoption after a crash) is fine.
                known = indexed.setdefault(pack_id, {})
                known.update(((e.offset, e.chunk_id), e) for e in entries)
            if blake3.blake3(vault.backend.get(key)).digest().hex() != key.rsplit("/", 1)[1]:
                error(Problem("error", "index_checksum", key, "content does not match its name"))
        except ObjectMissing:  # deleted since the listing: a collection rewrote the index
            report.index_objects -= 1
        except CorruptObject as exc:
            error(Problem("error", "index_unreadable", key, exc.message))
            if key not in vault.index_problems:
                # This host's index absorbed it while it read: the next open rebuilds the
                # index without it, and the next backup adopts its packs again.
                vault.forget_local_index()
    present = set(vault.pack_ids())
    report.packs = len(present)
    leftovers = getattr(innermost(vault.backend), "list_leftovers", None)
    for name in leftovers() if leftovers else []:
        report.problems.append(
            Problem("warning", "leftover_temp", name, "temporary file of an interrupted write")
        )
    try:
        vault.gc_pending()
    except CorruptObject as exc:
        report.problems.append(
            Problem("warning", "gc_pending_unreadable", "gc/pending", exc.message)
        )
    pending = vault.gc_pending_packs()
    for pack_id in sorted(present - set(indexed)):
        if pack_id in pending:
            report.problems.append(
                Problem(
                    "warning",
                    "sweep_interrupted",
                    pack_key(pack_id),
                    "garbage collection rewrote the index without this pack (after copying"
                    " what was live) and was interrupted before deleting it, or the store"
                    " retains it; the next `gc` finishes it",
                )
            )
            continue
        report.problems.append(
            Problem(
                "warning",
                "orphan_pack",
                pack_key(pack_id),
                "pack named by no index (an interrupted backup); the next backup adopts it",
            )
        )
    for pack_id, by_place in sorted(indexed.items()):
        key = pack_key(pack_id)
        entries = list(by_place.values())
        if pack_id not in present and pack_id in pending:
            report.problems.append(
                Problem(
                    "warning",
                    "sweep_interrupted",
                    key,
                    "garbage collection deleted this pack (after copying what was live) and "
                    "was interrupted before rewriting the index; the next `gc` finishes it",
                )
            )
            continue
        if pack_id not in present:
            error(
                Problem(
                    "error",
                    "pack_missing",
                    key,
                    f"pack is missing; {len(entries)} chunks in it are lost",
                )
            )
            continue
        _check_pack(vault, pack_id, entries, read_data, report)
    report.chunks = len(vault.index)
    _check_points(vault, report)
    _check_state(vault, report)
    _check_keys(vault, report)
    return report


def _check_keys(vault: Vault, report: CheckReport) -> None:
    """Every key slot reads: a damaged one (a recovery key's, say) is found now, not on the
    day it is needed. A warning: the vault still opens with the others."""
    for slot in keyring.list_slots(vault):
        if slot.problem is not None:
            message = f"{slot.problem}; its passphrase or recovery key no longer opens the vault"
            report.problems.append(Problem("warning", "key_unreadable", f"keys/{slot.id}", message))


def _check_state(vault: Vault, report: CheckReport) -> None:
    """The vault's settings and each VM's protection record open and parse."""
    try:
        vault.get_document(SETTINGS_KEY, AAD_SETTINGS)
    except (CorruptObject, ObjectMissing) as exc:
        report.problems.append(
            Problem(
                "error",
                "settings_unreadable",
                SETTINGS_KEY,
                f"{exc.message}; deletions are refused until `vmvault vault immutability` "
                "and `vmvault vault soft-delete` write it again",
            )
        )
    for key in vault.backend.list(PROTECTION_PREFIX):
        try:
            doc = vault.get_document(key, AAD_PROTECTION)
            if doc is None:
                continue  # deleted since the listing
            if protection_key(vault, str(doc.get("vm"))) != key:
                # Sealed with the vault's key but filed under another VM's name: a record
                # moved (or copied) over another one.
                raise CorruptObject(f"{key}: holds the record of another VM")
        except ObjectMissing:
            continue  # deleted since the listing
        except CorruptObject as exc:
            report.problems.append(Problem("error", "protection_unreadable", key, exc.message))


def _check_pack(
    vault: Vault, pack_id: bytes, entries: list[PackEntry], read_data: bool, report: CheckReport
) -> None:
    key = pack_key(pack_id)
    try:
        header = vault.read_pack_header(pack_id)
    except (CorruptObject, ObjectMissing) as exc:
        report.problems.append(Problem("error", "pack_header", key, exc.message))
        vault.damage.mark(pack_id, exc.message)
        return
    if sorted(header, key=lambda e: e.offset) != sorted(entries, key=lambda e: e.offset):
        report.problems.append(
            Problem("error", "index_mismatch", key, "the pack's header disagrees with the index")
        )
        vault.damage.mark(pack_id, "the pack's header disagrees with the index")
    if not read_data:
        return
    blob = vault.backend.get(key)
    report.bytes_read += len(blob)
    if blake3.blake3(blob).digest() != pack_id:
        report.problems.append(
            Problem("error", "pack_checksum", key, "pack content does not match its name (damaged)")
        )
        vault.damage.mark(pack_id, "pack content does not match its name")
    view = memoryview(blob)
    by_blob: dict[int, list[PackEntry]] = {}
    for e in header:
        by_blob.setdefault(e.offset, []).append(e)
    for offset, members in by_blob.items():
        results: dict[bytes, memoryview | Exception] = {}
        sealed = view[offset : offset + members[0].length]
        locations = [
            (e.chunk_id, Location(pack_id, e.kind, e.offset, e.length, e.start, e.raw_length))
            for e in members
        ]
        vault.open_chunks(pack_id, offset, sealed, locations, results)
        for result in results.values():
            if isinstance(result, Exception):
                report.problems.append(Problem("error", "chunk_damaged", key, str(result)))
                break


def _check_points(vault: Vault, report: CheckReport) -> None:
    seen_records: set[bytes] = set()
    for point_id in vault.point_ids():
        report.points += 1
        try:
            point = vault.get_point(point_id)
        except PointNotFound:  # forgotten or pruned since the listing
            report.points -= 1
            continue
        except (CorruptObject, ObjectMissing) as exc:
            report.problems.append(Problem("error", "point_unreadable", point_id, exc.message))
            continue
        for disk in point["disks"]:
            what = f"{point_id}/{disk['name']}"
            try:
                manifest = vault.get_manifest(disk["manifest"])
            except (CorruptObject, ObjectMissing) as exc:
                report.problems.append(Problem("error", "manifest_unreadable", what, exc.message))
                continue
            todo = [r for r in dict.fromkeys(manifest.records) if r != ZERO_ID]
            todo = [r for r in todo if r not in seen_records]
            seen_records.update(todo)
            report.records += len(todo)
            for rid, chunks in vault.records(todo).items():
                if isinstance(chunks, Exception):
                    report.problems.append(Problem("error", "record_damaged", what, str(chunks)))
                    continue
                missing = [c for c in chunks if c != ZERO_ID and c not in vault.index]
                if missing:
                    report.problems.append(
                        Problem(
                            "error",
                            "chunk_missing",
                            what,
                            f"{len(missing)} chunk(s) of record {rid.hex()[:16]} are not indexed",
                        )
                    )
