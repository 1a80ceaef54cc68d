"""Immutability enforced by the store too: which of the vault's objects the store is asked
to retain, for how long, and the maintenance that keeps the dates ahead.

vmvault's own immutability (``protection/``) only binds vmvault: whoever holds the store's
credentials can still delete objects. Where the store can retain objects (the ``Retaining``
capability of ``backends/base.py``: S3 Object Lock, Azure version-level immutability) and
the vault's settings ask for it (``store_retention_days``, set by ``vault immutability``),
the backend writes the objects below with a retention date in the store's strict mode when
the vault is ``locked`` (S3 COMPLIANCE, Azure Locked) or its relaxed one when it is ``on``
(GOVERNANCE, Unlocked).

Why only these: they are written once and never rewritten (packs, index objects,
manifests, points, key slots under ``keys/``, without which nothing can be decrypted) or
written at ``init`` only (``config``). The objects rewritten in place (``settings``,
``protection/``, ``gc/pending``, ``locks/``, ``damaged/``, ``replica``) are not: every
rewrite would leave one more retained version behind.

Why dates are extended: a pack written a year ago may hold chunks today's points still use
(deduplication), so a date set once at write time would expire under live data. Each
maintenance (``refresh``) moves the date of every object still listed to ``days`` (plus a
week, so an object is touched about once a week) past now. If maintenance stops, as it
would after an attacker took over, every object the vault needed stays retained at least
``days`` days past the last run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vmvault.backends.base import (
    Retaining,
    RetentionMode,
    StoreRetention,
    WriteRetention,
    retaining,
)
from vmvault.errors import CorruptObject, ObjectMissing, VmvaultError
from vmvault.vault.documents import AAD_SETTINGS, SETTINGS_KEY

if TYPE_CHECKING:
    from vmvault.vault.vault import Vault

log = logging.getLogger("vmvault")

# Written once, or at init only; prefixes end in "/", the others are whole keys.
RETAINED_KEYS = ("packs/", "index/", "manifests/", "points/", "keys/", "config")
_warned: set[str] = set()  # locations already warned about, once per process
# How stores refuse a retention change: 403 (S3 AccessDenied), or a bad request.
_REFUSED = frozenset({"vault_read_only", "permission_denied", "backend_error"})


def rule_for(doc: Mapping[str, Any]) -> WriteRetention | None:
    """The retention the settings ask of the store (None: none, or immutability off)."""
    days = doc.get("store_retention_days")
    immutability = doc.get("immutability")
    if type(days) is not int or days <= 0 or immutability not in ("on", "locked"):
        return None
    mode: RetentionMode = "compliance" if immutability == "locked" else "governance"
    return WriteRetention(mode, days, RETAINED_KEYS)


def configure(vault: Vault) -> WriteRetention | None:
    """Tell the vault's backend what to retain on write, from the vault's settings.

    Costs nothing for a directory; for a store that can retain, one read of the settings
    and, when they ask for retention, one question to the store (a copy made by replication
    inherits the settings but may live in a bucket without Object Lock: it is then
    protected by vmvault only, and said so once)."""
    capability = retaining(vault.backend)
    if capability is None:
        return None
    try:
        doc = vault.get_document(SETTINGS_KEY, AAD_SETTINGS) or {}
    except CorruptObject:
        doc = {}  # `check` names it; the vault still opens
    rule = rule_for(doc)
    if rule is not None:
        support = capability.retention_support()
        if not support.available:
            where = vault.backend.describe()
            if where not in _warned:
                _warned.add(where)
                log.warning(
                    "warning: %s is immutable, but enforced by vmvault only: %s",
                    where,
                    support.detail,
                )
            rule = None
    capability.retain_writes(rule)
    return rule


@dataclass
class RetentionRefresh:
    """What one maintenance did to the store's retention of the vault's objects."""

    mode: str
    days: int
    checked: int = 0  # objects whose retention was read
    extended: int = 0  # objects given a (later) retention date
    problem: str | None = None  # why the pass stopped early

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def refresh(
    vault: Vault, rule: WriteRetention | None, now: datetime | None = None
) -> RetentionRefresh | None:
    """Extend the retention of every object under ``RETAINED_KEYS`` that the store would
    let go within ``rule.days``: to ``rule.days`` plus a week from now.

    An object retained in the other mode (written while the vault was ``on``, now
    ``locked``) keeps its mode while its date lasts (stores refuse to change it), and after
    it if the store still refuses (SeaweedFS does). Never raises: a refusal of the store
    stops the pass with ``problem`` set (the next maintenance tries again); the objects done
    so far stay done.
    """
    capability = retaining(vault.backend)
    if rule is None or capability is None:
        return None
    now = now or datetime.now(UTC)
    result = RetentionRefresh(rule.mode, rule.days)
    wanted = rule.until(now)
    enough = now + timedelta(days=rule.days)
    try:
        keys = [
            key
            for name in RETAINED_KEYS
            for key in (list(vault.backend.list(name)) if name.endswith("/") else [name])
        ]
        for key in keys:
            try:
                current = capability.retention(key)
            except ObjectMissing:
                continue  # deleted since the listing (gc, prune), or never written
            result.checked += 1
            if current is not None and current.until is not None and current.until >= enough:
                continue  # retained long enough; never asked to shorten
            try:
                _extend(capability, key, current, StoreRetention(rule.mode, wanted), now)
            except ObjectMissing:
                continue
            result.extended += 1
    except VmvaultError as exc:
        result.problem = exc.message
        log.warning("warning: the store's retention was not extended: %s", exc.message)
    return result


def _extend(
    capability: Retaining,
    key: str,
    current: StoreRetention | None,
    wanted: StoreRetention,
    now: datetime,
) -> None:
    """Set ``wanted`` on ``key``, in the mode it already has where the store may refuse
    to switch it."""
    held = current.mode if current is not None else None
    if held is None or held == wanted.mode:
        capability.retain(key, wanted)
        return
    if current is not None and current.active(now):
        capability.retain(key, StoreRetention(held, wanted.until))  # a switch is refused
        return
    try:
        capability.retain(key, wanted)  # lapsed: a store may let the mode change now...
    except VmvaultError as exc:
        if exc.code not in _REFUSED:
            raise
        # ...SeaweedFS 4.48 does not (a lapsed GOVERNANCE still "needs a bypass")
        capability.retain(key, StoreRetention(held, wanted.until))
