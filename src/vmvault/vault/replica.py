"""What a copy made by replication records of itself (the ``replica`` document).

``{source_vault_id, source, created, last_success, pruned: [point ids]}``, sealed: where the
copy came from, when replication last succeeded, and the points the copy's own retention
removed while the vault still keeps them (replication must not bring them back).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vmvault.vault.documents import AAD_REPLICA, REPLICA_KEY
from vmvault.vault.vault import Vault


def replica_doc(copy: Vault) -> dict[str, Any] | None:
    """What a copy records of its origin (None: the vault is no copy)."""
    return copy.get_document(REPLICA_KEY, AAD_REPLICA)


def save_replica_doc(copy: Vault, doc: dict[str, Any]) -> None:
    copy.put_document(REPLICA_KEY, doc, AAD_REPLICA)


def note_pruned(vault: Vault, point_ids: Iterable[str]) -> None:
    """In a copy, remember points its own retention removed. No-op in a vault that is no
    copy."""
    ids = list(point_ids)
    if not ids:
        return
    doc = replica_doc(vault)
    if doc is None:
        return
    doc["pruned"] = sorted(set(doc.get("pruned", [])) | set(ids))
    save_replica_doc(vault, doc)
