"""Protection of VMs, soft delete and the immutable vault, kept in the vault itself.

The decisions are the pure functions of ``vmvault.policy``; this module only stores their
state as sealed objects (``settings`` for the vault, ``protection/<keyed hash of the VM>``
per VM), so the state travels with the data and no name appears in a key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vmvault.errors import ObjectMissing
from vmvault.policy import (
    SOFT_DELETE_DAYS,
    ProtectionState,
    Retention,
    due_for_purge,
    purge,
    resume_protection,
    retention_shortened,
    set_immutability,
    stop_protection,
    undelete,
)
from vmvault.policy.errors import ImmutableVaultError
from vmvault.policy.retention import RETENTION_COUNTS
from vmvault.vault.format import decode_json, encode_json
from vmvault.vault.vault import Vault

if TYPE_CHECKING:
    from vmvault.inventory import Inventory

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


class RetentionShortenedError(ImmutableVaultError):
    """Refused: an immutable vault cannot keep these VMs' points for less than recorded."""

    def __init__(self, immutability: str, refused: dict[str, tuple[str, list[str]]]) -> None:
        which = "; ".join(f"{vm} ({', '.join(fields)})" for vm, (_, fields) in refused.items())
        super().__init__(
            f"the vault is immutable ({immutability}): the retention of its points "
            f"cannot be shortened, whatever the policy is called: {which}"
        )
        # VM -> (the policy it was given, the fields that would keep its points for less)
        self.refused = refused


def _wanted(inventory: Inventory, vm_name: str | None) -> dict[str, tuple[str, Retention]]:
    """Each VM's policy name and retention (one VM with ``vm_name``); VMs without a policy
    are left alone by prune, so they ask for nothing."""
    vms = [inventory.vm(vm_name)] if vm_name else inventory.vms
    return {
        vm.name: (vm.policy, inventory.policy(vm.policy).retention)
        for vm in vms
        if vm.policy is not None
    }


def _longest(records: list[Retention]) -> Retention:
    """One retention that keeps at least what each of ``records`` keeps, as far as one can:
    every count at its largest, each anchor from the record keeping the most of its kind (a
    different anchor then counts as shortened, the safe side)."""
    weekly = max(records, key=lambda r: r.weekly_weeks or 0)
    monthly = max(records, key=lambda r: (r.yearly_years or 0, r.monthly_months or 0))
    yearly = max(records, key=lambda r: r.yearly_years or 0)
    return Retention(
        **{field: max(getattr(r, field) or 0 for r in records) for field in RETENTION_COUNTS},
        weekly_day=weekly.weekly_day,
        monthly_day=monthly.monthly_day,
        yearly_month=yearly.yearly_month,
    )


def _migrate_per_policy_records(vault: Vault, doc: dict[str, Any], inventory: Inventory) -> bool:
    """Move the records of older vaults (``retention``: one per policy name) to the VMs.

    Each VM that has points gets its policy's record if the inventory still gives it a
    policy of that name; otherwise (its policy renamed, another policy, none, the VM out of
    the inventory) nothing says which record its points were kept under, so it gets the
    longest of them. Returns whether ``doc`` changed (the caller saves it).
    """
    legacy = doc.pop("retention", None)
    if legacy is None:
        return False
    records = {name: Retention.model_validate(r) for name, r in legacy.items()}
    by_vm: dict[str, Any] = doc.setdefault("retention_by_vm", {})
    if records:
        policy_of = {vm.name: vm.policy for vm in inventory.vms}
        longest = _longest(list(records.values()))
        for vm in sorted({p["vm"] for p in vault.points()} - set(by_vm)):
            policy = policy_of.get(vm)
            record = records.get(policy, longest) if policy else longest
            by_vm[vm] = record.model_dump(mode="json")
    return True


def accept_retentions(
    vault: Vault, inventory: Inventory, *, vm_name: str | None = None, record: bool = True
) -> dict[str, list[str]]:
    """Check, and record, what each VM's points are kept for under ``inventory``.

    The guard holds per VM, whatever its policy is called: the retention each VM's points
    are kept for is sealed in the vault's settings (``retention_by_vm``) and a new one is
    compared with it. In an immutable vault a shorter one is refused for every VM at once
    (``RetentionShortenedError``), before anything is recorded or deleted; the record then
    only ever grows, so it is the longest retention the VM's points were promised. Without
    immutability the shorter one is recorded. Returns the shortened fields per VM (the
    caller raises the security alerts).
    """
    doc = settings(vault)
    changed = _migrate_per_policy_records(vault, doc, inventory)
    by_vm: dict[str, Any] = doc.setdefault("retention_by_vm", {})
    wanted = _wanted(inventory, vm_name)
    shortened: dict[str, tuple[str, list[str]]] = {}
    for vm, (policy_name, retention) in sorted(wanted.items()):
        if vm in by_vm:
            fields = retention_shortened(Retention.model_validate(by_vm[vm]), retention)
            if fields:
                shortened[vm] = (policy_name, fields)
    if shortened and doc["immutability"] != "off":
        raise RetentionShortenedError(doc["immutability"], shortened)
    for vm, (_, retention) in wanted.items():
        dumped = retention.model_dump(mode="json")
        changed |= by_vm.get(vm) != dumped
        by_vm[vm] = dumped
    if record and changed:
        _save_settings(vault, doc)
    return {vm: fields for vm, (_, fields) in shortened.items()}


def record_accepted_retentions(vault: Vault, inventory: Inventory) -> None:
    """Record the retentions of an inventory the API accepted: from then on the points are
    kept for them, prune or not. A shorter one (only accepted without immutability) is left
    for prune, which applies it and raises the alert."""
    doc = settings(vault)
    changed = _migrate_per_policy_records(vault, doc, inventory)
    by_vm: dict[str, Any] = doc.setdefault("retention_by_vm", {})
    for vm, (_, retention) in _wanted(inventory, None).items():
        old = by_vm.get(vm)
        if old is None or not retention_shortened(Retention.model_validate(old), retention):
            dumped = retention.model_dump(mode="json")
            changed |= old != dumped
            by_vm[vm] = dumped
    if changed:
        _save_settings(vault, doc)
