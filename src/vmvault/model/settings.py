"""The vault's settings document (``settings`` in docs/FORMAT.md), typed."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from vmvault.policy.model import Immutability


class VaultSettings(TypedDict):
    immutability: Immutability  # "off", "on" or "locked"
    soft_delete_days: int  # how long soft-deleted backup data is kept (14 to 180)
    # What each VM's points are kept for (a Retention as JSON), by VM: the retention guard's
    # record (protection/guard.py); older vaults kept one per policy name in ``retention``.
    retention_by_vm: NotRequired[dict[str, Any]]
    retention: NotRequired[dict[str, Any]]
    # How many days the store retains each object the vault still needs, past the last
    # maintenance, while the vault is immutable (vault/store_retention.py); absent: the
    # store is not asked (it cannot, or the user said no).
    store_retention_days: NotRequired[int]
