"""The REST API under /api/v1: every route is one service-layer call behind a role check.

Lists are paged (``offset``, ``limit``; the answer carries ``total``). Errors are
``{"error": {"code", "message"}}`` with the status the error carries (see vmvault.errors).

The routes live one module per resource; this package assembles them into the one router
that ``vmvault.server.app`` mounts. A new route goes in its resource's module; a new resource
gets a module whose ``router`` is included below. The order of inclusion is the order of
registration, and so the order of the OpenAPI schema's paths: keep it.
"""

from __future__ import annotations

from fastapi import APIRouter

from vmvault.server.api import admin, files, jobs, planning, points, reports, vault, vms

router = APIRouter(prefix="/api/v1")
for _resource in (vault, vms, jobs, points, files, planning, reports, admin):
    router.include_router(_resource.router)

__all__ = ["router"]
