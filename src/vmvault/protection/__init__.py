"""Protection of VMs, soft delete, the immutable vault and the retention guard, stored in
the vault (``store``, ``guard``); the decisions are the pure functions of
``vmvault.policy.protection``, the use cases and their security alerts ``app.protection``."""

from vmvault.protection.guard import (
    RetentionShortenedError,
    accept_retentions,
    record_accepted_retentions,
)
from vmvault.protection.store import (
    check_may_delete,
    has_state,
    purge_due,
    recover,
    resume,
    save_settings,
    set_soft_delete_days,
    set_vault_immutability,
    settings,
    state_of,
    stop,
)

__all__ = [
    "RetentionShortenedError",
    "accept_retentions",
    "check_may_delete",
    "has_state",
    "purge_due",
    "record_accepted_retentions",
    "recover",
    "resume",
    "save_settings",
    "set_soft_delete_days",
    "set_vault_immutability",
    "settings",
    "state_of",
    "stop",
]
