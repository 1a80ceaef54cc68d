"""A recovery point's disk served as a block device over NBD (`vmvault export`): nbdkit
runs ``plugin.py``, which reads the point through ``reader.py`` (a bounded block cache with
read-ahead, every chunk verified) within ``service.py`` (the vault under a lock) and ends
on time through ``watchdog.py``; ``launch.py`` starts and stops nbdkit, ``state.py`` keeps
the host's records."""
