"""Which snapshot a VM's backup takes, and the two phases of a live QEMU snapshot.

The inventory names a provider, or ``auto``: QEMU's live snapshot when the VM runs with a
QMP socket, else what the disks' file system allows (``choose_provider``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vmvault.engine.parents import parent_manifests
from vmvault.errors import UsageError
from vmvault.snapshot.base import SnapshotProvider, TwoPhaseSnapshot
from vmvault.snapshot.providers import choose_provider
from vmvault.vault.vault import Vault

if TYPE_CHECKING:
    from vmvault.inventory import Disk as VmDisk
    from vmvault.inventory import Vm


def choose_for_vm(
    vault: Vault, vm: Vm, disks: Sequence[VmDisk], running: bool, full: bool
) -> SnapshotProvider:
    """The inventory's choice; ``auto`` takes QEMU's live snapshot when a QMP socket is set."""
    from vmvault.snapshot.qemu_live import QemuLiveSnapshot  # asyncio: imported when needed

    if vm.snapshot == "qemu-live" or (vm.snapshot == "auto" and running and vm.qmp):
        if not vm.qmp:
            raise UsageError(f'VM {vm.name}: snapshot = "qemu-live" needs qmp = "SOCKET"')
        return QemuLiveSnapshot(
            vm.qmp,
            bitmap_name=f"vmvault-{vault.config.vault_id[:8]}",
            parent_generation=None if full else bitmap_generation(vault, vm.name, disks),
        )
    return choose_provider(vm.snapshot, running, [d.path for d in disks])


def bitmap_generation(vault: Vault, vm: str, disks: Sequence[VmDisk]) -> str | None:
    """The dirty-bitmap generation of the VM's newest point, if every disk's parent is it.

    A bitmap records writes since one point; using it against another parent would miss
    writes, so anything else means no generation, and the provider reads disks in full.
    """
    ids = [i for i in reversed(vault.point_ids())]
    for point_id in ids:
        newest = vault.readable_point(point_id)
        if newest is None or newest.get("vm") != vm:
            continue
        generation = newest.get("meta", {}).get("qemu_generation")
        parents = parent_manifests(vault, vm, [d.name for d in disks])
        if generation and all(d.name in parents and parents[d.name][0] == point_id for d in disks):
            return str(generation)
        return None
    return None


def live_snapshot(provider: SnapshotProvider) -> TwoPhaseSnapshot | None:
    """The provider if its snapshot has two phases and change hints (live QEMU), or None."""
    return provider if isinstance(provider, TwoPhaseSnapshot) else None


def start_snapshot(provider: SnapshotProvider, paths: list[str]) -> list[str]:
    """While quiesced: only the instant part (QEMU copies after the thaw)."""
    live = live_snapshot(provider)
    return live.start(paths) if live else provider.take(paths)
