"""vmvault: incremental, deduplicated, compressed and encrypted backups of virtual-machine disks."""

__version__ = "0.1.0"
