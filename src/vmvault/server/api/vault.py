"""Health and the vault: its identity, format, points, and its protection settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter

from vmvault import __version__
from vmvault.app.protection import set_immutability, set_soft_delete
from vmvault.catalog.replication import copies_status
from vmvault.errors import CorruptObject
from vmvault.model.jobs import JobKind
from vmvault.protection import settings
from vmvault.server.api.schemas import Admin, Reader, State, VaultSettingsRequest

router = APIRouter()


@router.get("/health", tags=["health"])
def health(state: State) -> dict[str, Any]:
    """Unauthenticated liveness: the server answers and its catalog is reachable."""
    state.queue.running()
    return {"status": "ok", "version": __version__}


@router.get("/vault", tags=["vault"])
def vault_info(state: State, _: Reader) -> dict[str, Any]:
    doc: Mapping[str, object]
    try:
        doc = settings(state.vault)
    except CorruptObject as exc:  # the rest of the vault still answers; `check` names it
        doc = {"immutability": f"unknown ({exc.message})", "soft_delete_days": None}
    return {
        "vault_id": state.vault_id,
        "location": state.vault.backend.describe(),
        "format_version": state.vault.config.version,
        "immutability": doc["immutability"],
        "soft_delete_days": doc["soft_delete_days"],
        # What the settings ask of the store; whether it can is `vault immutability`'s answer
        "store_retention_days": doc.get("store_retention_days"),
        "points": len(state.points()),
        "damaged_points": sorted(state.damaged_points()),
    }


@router.get("/vault/copies", tags=["vault"])
def vault_copies(state: State, _: Reader) -> dict[str, Any]:
    """The vault's copies (the inventory's replication entries and every destination a
    replication ran to): last run, last success, points waiting, lag."""
    items = copies_status(state.catalog, state.vault_id, state.inventory())
    return {"items": items, "total": len(items)}


@router.patch("/vault", tags=["vault"])
def vault_settings(body: VaultSettingsRequest, state: State, _: Admin) -> dict[str, Any]:

    if body.soft_delete_days is not None:
        set_soft_delete(state.ctx, body.soft_delete_days)
    if body.immutability is not None or body.store_retention_days is not None:
        # The objects already stored get the store's retention at the next maintenance.
        value = body.immutability or settings(state.vault)["immutability"]
        set_immutability(state.ctx, value, store_days=body.store_retention_days)
    return vault_info(state, _)


@router.post("/maintenance", tags=["vault"], status_code=202)
def maintenance_now(state: State, _: Admin) -> dict[str, Any]:
    """Queue the daily upkeep now: purge what soft delete no longer keeps, every VM's
    retention (prune), instant-restore expiry, then garbage collection."""
    job_id = state.queue.enqueue(JobKind.MAINTENANCE, "", {"manual": True}, max_attempts=1)
    return state.queued(job_id)
