"""A protected VM's lifecycle, soft delete and vault immutability as a pure state machine.

States follow Azure Backup (AZURE-FACTS.md, "Soft delete and immutability"):

    protected --stop(retain)--> stopped-retain --resume--> protected
    protected / stopped-retain --stop(delete)--> stopped-deleted (until purge_at)
    stopped-deleted --undelete (before purge_at)--> stopped-retain
    stopped-deleted --purge (at or after purge_at)--> purged

Deleting is always soft: the data stays recoverable for ``soft_delete_days`` (14 by default,
14..180). An immutable vault ("on", reversible, or "locked", irreversible) refuses deleting
backup data and any retention change that can delete points early. Every function takes the
current instant explicitly and returns a new state; nothing is mutated or stored here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal, get_args

from vmvault.policy.errors import (
    ImmutableVaultError,
    PolicyError,
    ProtectionStateError,
    StoreRetentionUnavailable,
)
from vmvault.policy.model import IMMUTABILITY_STATES, Immutability, Retention
from vmvault.policy.retention import retention_shortened

ProtectionStatus = Literal["protected", "stopped-retain", "stopped-deleted", "purged"]
PROTECTION_STATUSES: Final[tuple[ProtectionStatus, ...]] = get_args(ProtectionStatus)

# How long the store retains each object vmvault still needs, past the last maintenance,
# when the vault is immutable and the store can (S3 Object Lock, Azure immutability).
STORE_RETENTION_DAYS: Final = 30
STORE_RETENTION_RANGE: Final = (1, 36500)
SOFT_DELETE_DAYS: Final = 14
SOFT_DELETE_RANGE: Final = (14, 180)
# Azure raises its "upcoming purge" security alert this long before the purge.
PURGE_ALERT_BEFORE: Final = timedelta(days=2)


@dataclass(frozen=True, slots=True)
class ProtectionState:
    """Where one protected item stands.

    ``changed_at`` is when it entered ``status`` (None for an item created before anyone
    recorded it); ``purge_at`` is set exactly in "stopped-deleted".
    """

    status: ProtectionStatus = "protected"
    changed_at: datetime | None = None
    purge_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.status not in PROTECTION_STATUSES:
            raise PolicyError(
                f"protection status must be one of {', '.join(PROTECTION_STATUSES)}, "
                f"not {self.status!r}"
            )
        if (self.status == "stopped-deleted") != (self.purge_at is not None):
            raise PolicyError("purge_at is set exactly when the status is stopped-deleted")
        for name in ("changed_at", "purge_at"):
            value = getattr(self, name)
            if value is not None:
                _require_aware(value, name)

    def to_dict(self) -> dict[str, str | None]:
        """As JSON: times in ISO 8601 (the vault's protection record, the API's answer)."""
        return {
            "status": self.status,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
            "purge_at": self.purge_at.isoformat() if self.purge_at else None,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ProtectionState:
        """From ``to_dict``'s JSON; ``PolicyError`` names what does not fit."""
        try:
            return cls(
                doc["status"],
                datetime.fromisoformat(doc["changed_at"]) if doc.get("changed_at") else None,
                datetime.fromisoformat(doc["purge_at"]) if doc.get("purge_at") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"not a protection state: {exc!r}") from None


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise PolicyError(f"{name} must be a timezone-aware datetime, got {value.isoformat()}")


def _check_immutability(value: str, name: str = "immutable") -> None:
    if value not in IMMUTABILITY_STATES:
        raise PolicyError(f"{name} must be one of {', '.join(IMMUTABILITY_STATES)}, not {value!r}")


def check_soft_delete_days(days: int) -> int:
    """Soft delete keeps deleted data 14 to 180 days (Azure's range); anything else refused."""
    low, high = SOFT_DELETE_RANGE
    if type(days) is not int or not low <= days <= high:
        raise PolicyError(f"soft delete keeps data {low} to {high} days, not {days!r}")
    return days


def stop_protection(
    state: ProtectionState,
    *,
    delete_data: bool,
    now: datetime,
    soft_delete_days: int = SOFT_DELETE_DAYS,
    immutable: Immutability = "off",
) -> ProtectionState:
    """Stop backing up; keep the data ("stopped-retain") or soft-delete it ("stopped-deleted").

    Repeating the same stop is a no-op (a second delete must not push ``purge_at`` later).
    Deleting is refused by an immutable vault; retaining is refused for deleted data (undelete
    it instead) and for purged items.
    """
    _require_aware(now, "now")
    _check_immutability(immutable)
    check_soft_delete_days(soft_delete_days)
    if state.status == "purged":
        raise ProtectionStateError("the backup data is purged; there is nothing to stop")
    if not delete_data:
        if state.status == "stopped-deleted":
            raise ProtectionStateError("the backup data is soft-deleted; undelete it to retain it")
        if state.status == "stopped-retain":
            return state
        return ProtectionState("stopped-retain", changed_at=now)
    if immutable != "off":
        raise ImmutableVaultError(
            f"the vault is immutable ({immutable}): stop protection with retained data instead "
            "of deleting it"
        )
    if state.status == "stopped-deleted":
        return state
    return ProtectionState(
        "stopped-deleted", changed_at=now, purge_at=now + timedelta(days=soft_delete_days)
    )


def resume_protection(state: ProtectionState, now: datetime) -> ProtectionState:
    """Back to "protected" from "stopped-retain" (deleted data must be undeleted first)."""
    _require_aware(now, "now")
    if state.status == "protected":
        return state
    if state.status != "stopped-retain":
        raise ProtectionStateError(f"cannot resume protection from {state.status}")
    return ProtectionState("protected", changed_at=now)


def undelete(state: ProtectionState, now: datetime) -> ProtectionState:
    """Recover soft-deleted data before ``purge_at``; like Azure, the item comes back as
    "stopped-retain" (resume protection is a separate, deliberate step)."""
    _require_aware(now, "now")
    if state.status != "stopped-deleted" or state.purge_at is None:
        raise ProtectionStateError(f"only soft-deleted data can be undeleted, not {state.status}")
    if now >= state.purge_at:
        raise ProtectionStateError(
            f"the soft-delete period ended at {state.purge_at.isoformat()}; the data is purged"
        )
    return ProtectionState("stopped-retain", changed_at=now)


def due_for_purge(state: ProtectionState, now: datetime) -> bool:
    """Whether the soft-delete period is over (``purge_at`` reached) and the data may go."""
    _require_aware(now, "now")
    return (
        state.status == "stopped-deleted" and state.purge_at is not None and now >= state.purge_at
    )


def purge(state: ProtectionState) -> ProtectionState:
    """Mark soft-deleted data as gone for good. The caller checks ``due_for_purge`` first (this
    function reads no clock); ``changed_at`` becomes ``purge_at``, when it became purgeable."""
    if state.status != "stopped-deleted":
        raise ProtectionStateError(f"only soft-deleted data can be purged, not {state.status}")
    return replace(state, status="purged", changed_at=state.purge_at, purge_at=None)


def upcoming_purge_alert(state: ProtectionState, now: datetime) -> bool:
    """Azure's "upcoming purge" security alert: within the last 2 days before ``purge_at``."""
    _require_aware(now, "now")
    if state.status != "stopped-deleted" or state.purge_at is None:
        return False
    return state.purge_at - PURGE_ALERT_BEFORE <= now < state.purge_at


def set_immutability(current: Immutability, new: Immutability) -> Immutability:
    """Change the vault's immutability: "off" and "on" switch freely, "locked" is forever."""
    _check_immutability(current, "current immutability")
    _check_immutability(new, "new immutability")
    if current == "locked" and new != "locked":
        raise ImmutableVaultError("the vault's immutability is locked and cannot be changed")
    return new


def choose_store_retention_days(
    current: Immutability,
    current_days: int | None,
    new: Immutability,
    requested: int | None,
    *,
    available: bool,
    why_not: str = "",
) -> int | None:
    """How many days the store is to retain the vault's objects (None: not asked of it).

    ``requested`` is what the user asked for (None: nothing said; 0: vmvault only). Asking
    a store that cannot is refused, as is shortening the period while the vault stays
    immutable (the same promise as for a retention). Nothing said keeps the recorded period,
    or takes the default where the store can retain; while immutability is off the record
    stays, unapplied, for the next time it is turned on."""
    _check_immutability(current, "current immutability")
    _check_immutability(new, "new immutability")
    if requested is None:
        if current_days or new == "off":
            return current_days
        return STORE_RETENTION_DAYS if available else None
    low, high = STORE_RETENTION_RANGE
    if type(requested) is not int or not (requested == 0 or low <= requested <= high):
        raise PolicyError(f"store retention days must be 0 (none) or {low} to {high}")
    if requested and not available:
        raise StoreRetentionUnavailable(
            f"the store cannot enforce immutability: {why_not}"
            if why_not
            else "the store cannot enforce immutability"
        )
    if current != "off" and new != "off" and current_days and requested < current_days:
        raise ImmutableVaultError(
            f"the vault is immutable ({current}): the store's retention of its objects cannot"
            f" be shortened from {current_days} days"
        )
    return requested or None


def check_retention_change(old: Retention, new: Retention, immutable: Immutability) -> list[str]:
    """Allow or refuse a retention change; return the shortened fields (for the security alert
    "policy modified with shorter retention"). An immutable vault refuses any shortening."""
    _check_immutability(immutable)
    shortened = retention_shortened(old, new)
    if shortened and immutable != "off":
        raise ImmutableVaultError(
            f"the vault is immutable ({immutable}): retention cannot be shortened "
            f"({', '.join(shortened)})"
        )
    return shortened
