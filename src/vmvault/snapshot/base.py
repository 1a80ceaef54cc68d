"""What every snapshot provider shares: the ``SnapshotProvider`` protocol and ``SnapshotError``.

Kept apart from the providers themselves so that ``providers``, ``lvm``, ``qemu_live`` and
``qmp_client`` can all import it without importing one another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class TwoPhaseSnapshot(SnapshotProvider, Protocol):
    """A provider whose snapshot is instant (``start``, while quiesced) and whose copies are
    made after the thaw (``wait``), with what it knows of each disk's changes (a live QEMU
    VM's dirty bitmaps); ``commit`` once the point is committed."""

    def start(self, paths: Sequence[str]) -> list[str]: ...

    def wait(self) -> None: ...

    def formats(self) -> list[str]:
        """How to read each image ``start`` returned."""

    def changed(self) -> list[list[tuple[int, int]] | None]:
        """Per disk the byte ranges that may differ from the parent point (None: unknown)."""

    def notes(self) -> list[str]: ...

    def generation(self) -> str:
        """The dirty-bitmap generation the next backup's change hints are valid against."""

    def commit(self) -> None: ...
