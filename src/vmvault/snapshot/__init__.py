"""Point-in-time copies of a VM's disks, taken while the VM is quiesced, removed after use."""

from vmvault.snapshot.base import SnapshotError, SnapshotProvider
from vmvault.snapshot.providers import FullCopy, InPlace, ReflinkCopy, choose_provider

__all__ = [
    "FullCopy",
    "InPlace",
    "ReflinkCopy",
    "SnapshotError",
    "SnapshotProvider",
    "choose_provider",
]
