"""``damaged/<pack hex>`` markers: packs a restore, verify or check found damaged.

Their chunks count as absent for backups, which store them again (the new copies are then
where reads go), and garbage collection never repacks them (Proxmox Backup Server's verify
marks bad chunks the same way). A marker is plaintext JSON ``{pack, found, reason}``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime

from vmvault.backends.base import Backend
from vmvault.errors import VmvaultError

DAMAGED_PREFIX = "damaged/"


class DamageMarks:
    """The vault's damaged packs: read at index load, added to by reads that fail."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.packs: set[bytes] = set()
        self._lock = threading.Lock()

    def load(self) -> set[bytes]:
        """Read the markers; returns (and keeps) the packs they name."""
        found = set()
        for key in self.backend.list(DAMAGED_PREFIX):
            try:
                found.add(bytes.fromhex(key.rsplit("/", 1)[1]))
            except ValueError:
                continue  # not a marker of ours
        self.packs = found
        return found

    def mark(self, pack_id: bytes, reason: str) -> None:
        """Record that a read found this pack damaged, so the next backup re-stores its
        chunks. Best effort: a read-only or full vault keeps the finding in the report only."""
        with self._lock:
            if pack_id in self.packs:
                return
            self.packs.add(pack_id)
        doc = {"pack": pack_id.hex(), "found": datetime.now(UTC).isoformat(), "reason": reason}
        with contextlib.suppress(OSError, VmvaultError):
            self.backend.put(DAMAGED_PREFIX + pack_id.hex(), json.dumps(doc).encode())

    def clear(self, pack_id: bytes) -> None:
        """Drop the marker of a pack that is gone (garbage collection deleted it)."""
        self.backend.delete(DAMAGED_PREFIX + pack_id.hex())
        self.packs.discard(pack_id)
