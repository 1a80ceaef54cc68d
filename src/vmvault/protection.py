"""Protection of VMs, soft delete and the immutable vault, kept in the vault itself.

The decisions are the pure functions of ``vmvault.policy``; this module only stores their
state as sealed objects (``settings`` for the vault, ``protection/<keyed hash of the VM>``
per VM), so the state travels with the data and no name appears in a key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vmvault.errors import ObjectMissing
from vmvault.policy import (
    SOFT_DELETE_DAYS,
    ProtectionState,
    due_for_purge,
    purge,
    resume_protection,
    set_immutability,
    stop_protection,
    undelete,
)
from vmvault.policy.errors import ImmutableVaultError
from vmvault.vault.format import decode_json, encode_json
from vmvault.vault.vault import Vault

SETTINGS_KEY = "settings"
AAD_SETTINGS = b"vmvault-settings-v1"
AAD_PROTECTION = b"vmvault-protection-v1"


def settings(vault: Vault) -> dict[str, Any]:
    try:
        sealed = vault.backend.get(SETTINGS_KEY)
    except ObjectMissing:
        return {"immutability": "off", "soft_delete_days": SOFT_DELETE_DAYS}
    return decode_json(vault.cipher.open(sealed, AAD_SETTINGS, SETTINGS_KEY), SETTINGS_KEY)


def _save_settings(vault: Vault, doc: dict[str, Any]) -> None:
    vault.backend.put(SETTINGS_KEY, vault.cipher.seal(encode_json(doc), AAD_SETTINGS))


def set_vault_immutability(vault: Vault, value: str) -> dict[str, Any]:
    doc = settings(vault)
    doc["immutability"] = set_immutability(doc["immutability"], value)  # type: ignore[arg-type]
    _save_settings(vault, doc)
    return doc


def set_soft_delete_days(vault: Vault, days: int) -> dict[str, Any]:
    from vmvault.policy import SOFT_DELETE_RANGE
    from vmvault.policy.errors import PolicyError

    low, high = SOFT_DELETE_RANGE
    if not low <= days <= high:
        raise PolicyError(f"soft delete keeps data {low} to {high} days, not {days}")
    doc = settings(vault)
    doc["soft_delete_days"] = days
    _save_settings(vault, doc)
    return doc


def _key(vault: Vault, vm: str) -> str:
    return f"protection/{vault.keys.chunk_id(b'vm:' + vm.encode()).hex()[:32]}"


def state_of(vault: Vault, vm: str) -> ProtectionState:
    key = _key(vault, vm)
    try:
        doc = decode_json(vault.cipher.open(vault.backend.get(key), AAD_PROTECTION, key), key)
    except ObjectMissing:
        return ProtectionState()
    return ProtectionState(
        doc["status"],
        datetime.fromisoformat(doc["changed_at"]) if doc.get("changed_at") else None,
        datetime.fromisoformat(doc["purge_at"]) if doc.get("purge_at") else None,
    )


def _save(vault: Vault, vm: str, state: ProtectionState) -> ProtectionState:
    doc = {
        "vm": vm,
        "status": state.status,
        "changed_at": state.changed_at.isoformat() if state.changed_at else None,
        "purge_at": state.purge_at.isoformat() if state.purge_at else None,
    }
    key = _key(vault, vm)
    vault.backend.put(key, vault.cipher.seal(encode_json(doc), AAD_PROTECTION))
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
            for point_id in ids:
                vault.delete_point(point_id)
            _save(vault, vm, purge(state))
            purged[vm] = len(ids)
    return purged


def accept_retentions(
    vault: Vault, wanted: dict[str, tuple[str, Any]], *, record: bool = True
) -> dict[str, list[str]]:
    """Check, and record, what each VM's points are kept for; ``wanted`` maps a VM to its
    policy's (name, retention).

    The guard holds per VM, whatever its policy is called: the retention last applied to a
    VM's points is sealed in the vault's settings (``retention_by_vm``), and a new one is
    compared with it (vaults written before per-VM records fall back to the record of the
    VM's policy name). In an immutable vault a shorter one is refused for every VM at once,
    before anything is recorded or deleted. Returns the shortened fields per VM (the caller
    raises the security alert).
    """
    from vmvault.policy import Retention, retention_shortened

    doc = settings(vault)
    by_vm: dict[str, Any] = doc.setdefault("retention_by_vm", {})
    by_policy: dict[str, Any] = doc.get("retention", {})  # the records of older versions
    shortened: dict[str, list[str]] = {}
    for vm, (policy_name, retention) in sorted(wanted.items()):
        old = by_vm.get(vm) or by_policy.get(policy_name)
        if old is not None:
            fields = retention_shortened(Retention.model_validate(old), retention)
            if fields:
                shortened[vm] = fields
    if shortened and doc["immutability"] != "off":
        which = "; ".join(f"{vm} ({', '.join(f)})" for vm, f in shortened.items())
        raise ImmutableVaultError(
            f"the vault is immutable ({doc['immutability']}): the retention of its points "
            f"cannot be shortened, whatever the policy is called: {which}"
        )
    if record and wanted:
        for vm, (_, retention) in wanted.items():
            by_vm[vm] = retention.model_dump(mode="json")
        _save_settings(vault, doc)
    return shortened
