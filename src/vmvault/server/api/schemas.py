"""What every route of the API shares: request bodies, the dependencies that give a route
its caller (``Reader``, ``Operator``, ``Admin``) and the server's state (``State``), paging."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vmvault.inventory import NEW_VM_NAME_PATTERN
from vmvault.policy import SOFT_DELETE_RANGE
from vmvault.policy.protection import STORE_RETENTION_RANGE
from vmvault.server.accounts import Principal, Role
from vmvault.server.auth import require
from vmvault.server.state import ServerState

Reader = Annotated[Principal, Depends(require(Role.reader))]
Operator = Annotated[Principal, Depends(require(Role.operator))]
Admin = Annotated[Principal, Depends(require(Role.admin))]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Items to skip.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
# Row ids: beyond 2**53 no database (nor JavaScript) keeps them exact.
RowId = Annotated[int, PathParam(ge=1, le=2**53)]
NAME_PATTERN = NEW_VM_NAME_PATTERN


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackupRequest(_Body):
    full: bool = Field(False, description="Read every disk in full, ignoring the parent point.")


class RestoreRequest(_Body):
    vm: str = Field(min_length=1, max_length=255, description="The VM whose point to restore.")
    point: str = Field("latest", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.:-]+$")
    new_name: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Name of the restored VM (its disks go in a folder); not in place.",
    )
    pool: str | None = Field(None, max_length=255, description="Pool of the restore target.")
    disks: list[Annotated[str, Field(max_length=255)]] | None = Field(
        None, max_length=64, description="Only these disks of the point (default: all)."
    )
    format: Literal["raw", "qcow2"] | None = Field(
        None, description="Restore every disk in this format (default: each disk's own)."
    )
    in_place: bool = Field(
        False, description="Replace the VM's own disks (a stopped VM; backed up first)."
    )
    confirm: str | None = Field(
        None, max_length=255, description="In place: the VM's name again, as a confirmation."
    )

    @model_validator(mode="after")
    def _new_name_or_in_place(self) -> RestoreRequest:
        if not self.in_place and not self.new_name:
            raise ValueError("new_name is required, unless in_place (with confirm)")
        return self


class ProtectionRequest(_Body):
    action: Literal["stop", "resume", "undelete"]
    delete_data: bool = False


class VaultSettingsRequest(_Body):
    immutability: Literal["off", "on", "locked"] | None = None
    soft_delete_days: int | None = Field(None, ge=SOFT_DELETE_RANGE[0], le=SOFT_DELETE_RANGE[1])
    # Days the store retains each object past the last maintenance; 0: vmvault only.
    store_retention_days: int | None = Field(None, ge=0, le=STORE_RETENTION_RANGE[1])


class TokenRequest(_Body):
    name: str = Field(min_length=1, max_length=255)
    role: Literal["reader", "operator", "admin"]


class InventoryRequest(_Body):
    toml: str = Field(max_length=10_000_000, description="The whole inventory file, as TOML.")


def server(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


State = Annotated[ServerState, Depends(server)]


def page(items: list[Any], total: int, offset: int, limit: int) -> dict[str, Any]:
    return {"items": items, "total": total, "offset": offset, "limit": limit}
