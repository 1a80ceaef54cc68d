"""The errors the policy package raises: all are user-facing ``UsageError``s with stable codes.

They live here rather than in ``vmvault.errors`` so the policy package stays self-contained;
each is still a ``VmvaultError`` (``code`` for scripts, a one-line ``message`` for people).
"""

from __future__ import annotations

from vmvault.errors import UsageError


class PolicyError(UsageError):
    """A policy that cannot be loaded, or a policy operation refused by its rules."""

    code = "bad_policy"


class ImmutableVaultError(PolicyError):
    """Refused because the vault is immutable: no deleting backup data, no shorter retention."""

    code = "immutable_vault"
    http_status = 409


class ProtectionStateError(PolicyError):
    """A protection change that the item's current state does not allow (e.g. undelete after
    the purge date)."""

    code = "protection_state"
    http_status = 409


class StoreRetentionUnavailable(PolicyError):
    """Store enforcement of immutability was asked for, but the vault's store cannot retain
    objects (a directory, a bucket without Object Lock, a container without version-level
    immutability)."""

    code = "store_retention_unavailable"
    http_status = 409
