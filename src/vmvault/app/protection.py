"""Protection changes as one call each, shared by the CLI and the API: the change itself
(stored in the vault by ``vmvault.protection``) and the security alert it raises."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from vmvault import protection
from vmvault.app.context import Context
from vmvault.app.records import raise_alert
from vmvault.errors import UsageError
from vmvault.model.settings import VaultSettings
from vmvault.policy import ProtectionState, upcoming_purge_alert
from vmvault.vault import store_retention
from vmvault.vault.vault import Vault

log = logging.getLogger("vmvault.scheduler")
ACTIONS = ("stop", "resume", "undelete", "show")


def protection_doc(vm: str, state: ProtectionState) -> dict[str, Any]:
    return {"vm": vm, **state.to_dict()}


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


def set_immutability(
    ctx: Context, value: str, *, store_days: int | None = None, retain_existing: bool = False
) -> dict[str, Any]:
    """Set the vault's immutability, and ask the store to enforce it too where it can
    (``store_days``: how long past the last maintenance; 0: vmvault only; None: as before,
    or the default where the store can). ``retain_existing`` sets the store's retention of
    the objects already there at once (the CLI); otherwise the next maintenance does (the
    API: a large vault takes one request per object). Returns the settings with ``store``:
    what the store enforces."""
    vault = ctx.open_vault(load_index=False)
    before = protection.settings(vault)["immutability"]
    doc, support = protection.set_vault_immutability(vault, value, store_days)
    if before != "off" and doc["immutability"] == "off":
        raise_alert(
            ctx,
            vault,
            "immutability_disabled",
            "vault immutability was turned off: backup data can be deleted again",
        )
    rule = vault.store_retention
    refreshed = store_retention.refresh(vault, rule) if retain_existing else None
    store = {
        "feature": support.feature or None,
        "available": support.available,
        "enforced": rule is not None,
        "mode": rule.mode if rule else None,
        "days": doc.get("store_retention_days"),
        "detail": support.detail,
        "note": support.note or None,
        "retained_now": refreshed.to_dict() if refreshed else None,
    }
    return {**doc, "store": store}


def set_soft_delete(ctx: Context, days: int) -> VaultSettings:
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


def purge_soft_deleted(ctx: Context) -> dict[str, int]:
    """Delete the points whose soft delete has ended (``purge_done`` alert per VM), and warn
    of purges in the next 2 days; returns the points purged per VM."""
    vault = ctx.open_vault(load_index=False)
    vms = sorted({p["vm"] for p in vault.points()})
    purged = protection.purge_due(vault, vms)
    for name, count in purged.items():
        log.info("purged %s: soft delete ended, %d point(s) deleted", name, count)
        raise_alert(
            ctx,
            vault,
            "purge_done",
            f"soft-deleted backup data of {name} was purged: {count} point(s) are gone",
            vm=name,
            details={"points": count},
        )
    _alert_upcoming_purges(ctx, vault, vms)
    return purged


def _alert_upcoming_purges(ctx: Context, vault: Vault, vms: list[str]) -> None:
    """Azure's "upcoming purge" alert: once per VM and purge date, in its last 2 days."""

    now = datetime.now(UTC)
    for name in vms:
        state = protection.state_of(vault, name)
        if state.purge_at is not None and upcoming_purge_alert(state, now):
            raise_alert(
                ctx,
                vault,
                "purge_upcoming",
                f"soft-deleted backup data of {name} will be purged at "
                f"{state.purge_at.isoformat()}; undelete it before then to keep it",
                vm=name,
                details={"purge_at": state.purge_at.isoformat()},
                dedupe_key=f"purge_upcoming:{vault.config.vault_id}:{name}:{state.purge_at}",
            )
