"""Protection of VMs, soft delete and the immutable vault: their state, kept in the vault.

The decisions are the pure functions of ``vmvault.policy``; this module only stores their
state as sealed objects (``settings`` for the vault, ``protection/<keyed hash of the VM>``
per VM), so the state travels with the data and no name appears in a key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from vmvault.backends.base import ObjectRetained, RetentionSupport, retaining
from vmvault.errors import CorruptObject
from vmvault.model.settings import VaultSettings
from vmvault.policy import (
    SOFT_DELETE_DAYS,
    ProtectionState,
    check_soft_delete_days,
    choose_store_retention_days,
    due_for_purge,
    purge,
    resume_protection,
    set_immutability,
    stop_protection,
    undelete,
)
from vmvault.policy.errors import ImmutableVaultError, PolicyError
from vmvault.policy.model import IMMUTABILITY_STATES
from vmvault.vault.documents import AAD_PROTECTION, AAD_SETTINGS, SETTINGS_KEY, protection_key
from vmvault.vault.vault import Vault


def settings(vault: Vault) -> VaultSettings:
    """The vault's settings (defaults before any were written); ``CorruptObject`` if the
    document does not hold them."""
    doc = vault.get_document(SETTINGS_KEY, AAD_SETTINGS)
    if doc is None:
        return {"immutability": "off", "soft_delete_days": SOFT_DELETE_DAYS}
    if (
        doc.get("immutability") not in IMMUTABILITY_STATES
        or type(doc.get("soft_delete_days")) is not int
    ):
        raise CorruptObject(f"{SETTINGS_KEY}: no immutability or soft delete days")
    if "store_retention_days" in doc and type(doc["store_retention_days"]) is not int:
        raise CorruptObject(f"{SETTINGS_KEY}: store retention days are not a number")
    return cast("VaultSettings", doc)


def save_settings(vault: Vault, doc: VaultSettings) -> None:
    vault.put_document(SETTINGS_KEY, doc, AAD_SETTINGS)


def store_support(vault: Vault) -> RetentionSupport:
    """Whether the vault's store can retain objects (one question to it, none for a
    directory)."""
    capability = retaining(vault.backend)
    if capability is None:
        return RetentionSupport(
            "", False, "a directory: vmvault has no way to ask a file system to retain files"
        )
    return capability.retention_support()


def set_vault_immutability(
    vault: Vault, value: str, store_days: int | None = None
) -> tuple[VaultSettings, RetentionSupport]:
    """Change the vault's immutability and what the store is asked to retain (see
    ``policy.choose_store_retention_days``); everything is checked before anything is
    written. Returns the settings and what the store can do."""
    doc = settings(vault)
    new = set_immutability(doc["immutability"], value)  # type: ignore[arg-type]
    support = store_support(vault)
    days = choose_store_retention_days(
        doc["immutability"],
        doc.get("store_retention_days"),
        new,
        store_days,
        available=support.available,
        why_not=support.detail,
    )
    doc["immutability"] = new
    if days:
        doc["store_retention_days"] = days
    else:
        doc.pop("store_retention_days", None)
    save_settings(vault, doc)
    vault.configure_store_retention()
    return doc, support


def set_soft_delete_days(vault: Vault, days: int) -> VaultSettings:
    doc = settings(vault)
    doc["soft_delete_days"] = check_soft_delete_days(days)
    save_settings(vault, doc)
    return doc


def state_of(vault: Vault, vm: str) -> ProtectionState:
    key = protection_key(vault, vm)
    doc = vault.get_document(key, AAD_PROTECTION)
    if doc is None:
        return ProtectionState()
    try:
        return ProtectionState.from_dict(doc)
    except PolicyError as exc:
        raise CorruptObject(f"{key}: {exc.message}") from None


def has_state(vault: Vault, vm: str) -> bool:
    """Whether protection was ever stopped, resumed or undeleted for a VM of this name."""
    return vault.get_document(protection_key(vault, vm), AAD_PROTECTION) is not None


def _save(vault: Vault, vm: str, state: ProtectionState) -> ProtectionState:
    doc = {"vm": vm, **state.to_dict()}
    vault.put_document(protection_key(vault, vm), doc, AAD_PROTECTION)
    return state


def stop(
    vault: Vault, vm: str, *, delete_data: bool, now: datetime | None = None
) -> ProtectionState:
    """Stop protecting ``vm``: keep its data (billed, never pruned) or soft-delete it."""
    conf = settings(vault)
    state = stop_protection(
        state_of(vault, vm),
        delete_data=delete_data,
        now=now or datetime.now(UTC),
        soft_delete_days=int(conf["soft_delete_days"]),
        immutable=conf["immutability"],
    )
    return _save(vault, vm, state)


def resume(vault: Vault, vm: str, now: datetime | None = None) -> ProtectionState:
    return _save(vault, vm, resume_protection(state_of(vault, vm), now or datetime.now(UTC)))


def recover(vault: Vault, vm: str, now: datetime | None = None) -> ProtectionState:
    """Undelete: back to "stop protection, retain data" while the soft delete lasts."""
    return _save(vault, vm, undelete(state_of(vault, vm), now or datetime.now(UTC)))


def check_may_delete(vault: Vault) -> None:
    if settings(vault)["immutability"] != "off":
        raise ImmutableVaultError("the vault is immutable: backup data cannot be deleted")


def purge_due(vault: Vault, vms: list[str], now: datetime | None = None) -> dict[str, int]:
    """Delete the points of soft-deleted VMs whose retention of deleted data has ended."""
    now = now or datetime.now(UTC)
    purged: dict[str, int] = {}
    for vm in vms:
        state = state_of(vault, vm)
        if due_for_purge(state, now):
            ids = [p["id"] for p in vault.points() if p["vm"] == vm]
            try:
                for point_id in ids:
                    vault.delete_point(point_id)
            except ObjectRetained:
                # The store keeps a point for now: the VM stays soft-deleted, not purged,
                # and the next purge tries again.
                continue
            _save(vault, vm, purge(state))
            purged[vm] = len(ids)
    return purged
