"""What several tests share: running the CLI, servers, fault-injecting backends, guest VMs,
PostgreSQL, frozen file systems. Importable as ``support`` (pyproject's pytest pythonpath)."""
