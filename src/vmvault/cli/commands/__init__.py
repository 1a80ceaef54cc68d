"""The CLI's commands, one module per group; `vmvault.cli.main` registers them on the app."""
