"""Protection changes as one call each, shared by the CLI and the API: the change itself
(stored in the vault by ``vmvault.protection``) and the security alert it raises."""

from __future__ import annotations

from typing import Any

from vmvault import protection
from vmvault.errors import UsageError
from vmvault.service import Context, raise_alert

ACTIONS = ("stop", "resume", "undelete", "show")


def protection_doc(vm: str, state: Any) -> dict[str, Any]:
    return {
        "vm": vm,
        "status": state.status,
        "changed_at": state.changed_at.isoformat() if state.changed_at else None,
        "purge_at": state.purge_at.isoformat() if state.purge_at else None,
    }


def change_protection(
    ctx: Context, vm: str, action: str, *, delete_data: bool = False
) -> dict[str, Any]:
    """Stop (retaining or soft-deleting the data), resume, undelete, or just show."""
    if action not in ACTIONS:
        raise UsageError(f"unknown protection action {action!r}: use {', '.join(ACTIONS)}")
    vault = ctx.open_vault(load_index=False)
    if action == "stop":
        state = protection.stop(vault, vm, delete_data=delete_data)
        if delete_data:
            purge = state.purge_at.isoformat() if state.purge_at else "later"
            raise_alert(
                ctx,
                vault,
                "backup_data_deleted",
                f"protection of {vm} stopped and its backup data soft-deleted "
                f"(recoverable until {purge})",
                vm=vm,
                details={"purge_at": purge},
            )
    elif action == "resume":
        state = protection.resume(vault, vm)
    elif action == "undelete":
        state = protection.recover(vault, vm)
    else:
        state = protection.state_of(vault, vm)
    return protection_doc(vm, state)


def set_immutability(ctx: Context, value: str) -> dict[str, Any]:
    vault = ctx.open_vault(load_index=False)
    before = protection.settings(vault)["immutability"]
    doc = protection.set_vault_immutability(vault, value)
    if before != "off" and doc["immutability"] == "off":
        raise_alert(
            ctx,
            vault,
            "immutability_disabled",
            "vault immutability was turned off: backup data can be deleted again",
        )
    return doc


def set_soft_delete(ctx: Context, days: int) -> dict[str, Any]:
    vault = ctx.open_vault(load_index=False)
    before = int(protection.settings(vault)["soft_delete_days"])
    doc = protection.set_soft_delete_days(vault, days)
    if days < before:
        raise_alert(
            ctx,
            vault,
            "soft_delete_shortened",
            f"soft delete now keeps deleted backup data {days} days instead of {before}",
            details={"before": before, "after": days},
        )
    return doc
