"""The `vmvault` command line (typer + rich)."""
