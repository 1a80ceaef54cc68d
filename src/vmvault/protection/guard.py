"""The retention guard: an immutable vault never keeps a VM's points for less than it
promised, whatever the VM's policy is called. What each VM's points are kept for is sealed
in the vault's settings (``retention_by_vm``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmvault.model.settings import VaultSettings
from vmvault.policy import Retention, retention_shortened
from vmvault.policy.errors import ImmutableVaultError
from vmvault.policy.retention import RETENTION_COUNTS
from vmvault.protection.store import save_settings, settings
from vmvault.vault.vault import Vault

if TYPE_CHECKING:
    from vmvault.inventory import Inventory


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


def _migrate_per_policy_records(vault: Vault, doc: VaultSettings, inventory: Inventory) -> bool:
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
        save_settings(vault, doc)
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
        save_settings(vault, doc)
