"""The inventory: what vmvault protects (pools, policies, VMs and their disks), read from
and written to a TOML file. ``model``: the validated shape; ``load``: reading it; ``write``:
the one writer; ``discovery``: libvirt domains as entries to review."""

from vmvault.inventory.load import (
    NEW_VM_NAME_PATTERN,
    InventoryFile,
    check_new_vm_name,
    load_inventory,
    parse_inventory,
)
from vmvault.inventory.model import (
    DEFAULT_INVENTORY,
    BootSettings,
    Disk,
    DiskFormat,
    DiskRole,
    DrillSettings,
    Inventory,
    InventoryError,
    Limits,
    Pricing,
    Replication,
    StoragePool,
    Vm,
    VmNotFound,
    VmState,
)
from vmvault.inventory.write import (
    write_inventory,
    write_starts,
)
from vmvault.units import MIN_RATE  # the least rate a limit may name

__all__ = [
    "DEFAULT_INVENTORY",
    "MIN_RATE",
    "NEW_VM_NAME_PATTERN",
    "BootSettings",
    "Disk",
    "DiskFormat",
    "DiskRole",
    "DrillSettings",
    "Inventory",
    "InventoryError",
    "InventoryFile",
    "Limits",
    "Pricing",
    "Replication",
    "StoragePool",
    "Vm",
    "VmNotFound",
    "VmState",
    "check_new_vm_name",
    "load_inventory",
    "parse_inventory",
    "write_inventory",
    "write_starts",
]
