"""What every snapshot provider shares: the ``SnapshotProvider`` protocol and ``SnapshotError``.

Kept apart from the providers themselves so that ``providers``, ``lvm``, ``qemu_live`` and
``qmp_client`` can all import it without importing one another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vmvault.errors import VmvaultError


class SnapshotError(VmvaultError):
    code = "snapshot_failed"
    transient = True  # the VM or its hypervisor was busy: worth another try


class SnapshotProvider(Protocol):
    name: str

    def take(self, paths: Sequence[str]) -> list[str]:
        """Point-in-time images of ``paths`` (same order); called while the VM is quiesced."""

    def release(self) -> None:
        """Remove whatever ``take`` created."""
