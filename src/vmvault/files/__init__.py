"""Files inside a recovery point's disks, read without restoring the disk: partition
tables, LVM and the guests' file systems parsed in this process (never mounted by the
host's kernel), over the vault's blocks."""
