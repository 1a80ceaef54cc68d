"""The use cases: what a user asks for, one call each, shared by the CLI, the workers and the
API. They open the vault and the catalog through a ``Context``, run the engine and keep the
catalog and the job history in step with the vault. No prompts and no printing: results are
plain dicts and dataclasses, errors are ``vmvault.errors`` (see docs/ARCHITECTURE.md)."""
