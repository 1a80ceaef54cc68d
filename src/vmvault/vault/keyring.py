"""Changes to an opened vault's key slots (vault/keyslots.py): add, remove, replace.

Every change keeps the vault openable whatever moment it stops at: a new slot is one
creation-only put of a new name (whole or absent), a removal is one delete done only while
another slot remains, and a passphrase change is an addition followed by a removal, so a
crash in between leaves both passphrases working.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vmvault.backends.base import ObjectRetained, put_new
from vmvault.errors import Conflict, CorruptObject, NotFound, ObjectMissing, UnsupportedFormat
from vmvault.vault import keyslots
from vmvault.vault.keyslots import KeySlot, Kind
from vmvault.vault.vault import Vault


@dataclass(frozen=True)
class SlotInfo:
    """What ``vault key list`` shows of one slot; never a secret."""

    id: str
    kind: str | None  # None: the slot does not read
    label: str
    created: str | None
    kdf: dict[str, int] | None
    version: int | None
    current: bool  # the slot this vault was opened with
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read(vault: Vault, key: str) -> KeySlot:
    return keyslots.parse(key, vault.backend.get(key))


def list_slots(vault: Vault) -> list[SlotInfo]:
    """Every slot, ``keys/default`` first; a damaged one is listed with its problem."""
    current = vault.key_slot.key if vault.key_slot is not None else None
    out = []
    for key in keyslots.slot_keys(vault.backend):
        name = key.removeprefix(keyslots.KEYS_PREFIX)
        try:
            slot = _read(vault, key)
            about = slot.about(vault.keys)
        except ObjectMissing:
            continue  # removed since the listing
        except (CorruptObject, UnsupportedFormat) as exc:
            out.append(SlotInfo(name, None, "", None, None, None, key == current, exc.message))
            continue
        # A revision 1 slot has no time of its own: it was made with the vault.
        created = about["created"] or (vault.config.created if slot.version == 1 else None)
        out.append(
            SlotInfo(
                name, slot.kind, about["label"], created, slot.kdf, slot.version, key == current
            )
        )
    return out


def find_slot(vault: Vault, slot_id: str) -> str:
    """The slot key an id (or a unique prefix of one) names."""
    keys = keyslots.slot_keys(vault.backend)
    wanted = slot_id.removeprefix(keyslots.KEYS_PREFIX)
    exact = keyslots.KEYS_PREFIX + wanted
    if exact in keys:
        return exact
    matches = [k for k in keys if k.removeprefix(keyslots.KEYS_PREFIX).startswith(wanted)]
    if len(matches) != 1 or not wanted:
        what = "no" if not matches else "more than one"
        raise NotFound(f"{what} key of this vault is named {slot_id!r} (see `vault key list`)")
    return matches[0]


def kdf_in_use(vault: Vault) -> dict[str, int] | None:
    """The KDF cost of the slot the vault was opened with: new slots cost what it costs (a
    vault made with a lower cost keeps it; None: the default)."""
    return vault.key_slot.kdf if vault.key_slot is not None else None


def add_slot(vault: Vault, secret: str, *, kind: Kind, label: str) -> str:
    """A new slot opening this vault with ``secret``; its key. One creation-only put."""
    key = keyslots.new_slot_key()
    created = datetime.now(UTC).isoformat(timespec="seconds")
    data = keyslots.encode(
        vault.keys,
        secret,
        key=key,
        kind=kind,
        label=label,
        created=created,
        scrypt=kdf_in_use(vault),
    )
    put_new(vault.backend, key, data)
    return key


def remove_slot(vault: Vault, key: str) -> None:
    """Delete one slot, never the last readable one.

    Two admins removing the last two slots at once could each see the other's; so after
    the delete the slots are listed again, and if none is left the removed one is put back
    (its bytes were read first) and the removal refused."""
    others = []
    for other in keyslots.slot_keys(vault.backend):
        if other != key:
            with contextlib.suppress(CorruptObject, UnsupportedFormat, ObjectMissing):
                others.append(_read(vault, other))
    if not others:
        raise Conflict(f"{key} is the vault's last key: it cannot be removed (add another first)")
    data = vault.backend.get(key)
    try:
        vault.backend.delete(key)
    except ObjectRetained as exc:
        raise Conflict(
            f"the store retains {key} (the vault is immutable): it still opens the vault "
            f"until the store lets it go ({exc.message})"
        ) from None
    if not keyslots.slot_keys(vault.backend):
        put_new(vault.backend, key, data)
        raise Conflict(f"{key} was the last key left (another was removed meanwhile): kept")


def replace_slot(vault: Vault, new_passphrase: str) -> tuple[str, str]:
    """Change the passphrase of the slot the vault was opened with: a new slot with the same
    label first, then the old one removed. Returns (old key, new key)."""
    old = vault.key_slot
    if old is None or old.kind != "passphrase":
        raise Conflict(
            "the vault was opened with a recovery key, which has no passphrase to change: "
            "give it a passphrase with `vault key add`"
        )
    label = old.about(vault.keys)["label"]
    new = add_slot(vault, new_passphrase, kind="passphrase", label=label)
    vault.key_slot = _read(vault, new)
    try:
        remove_slot(vault, old.key)
    except Conflict as exc:
        raise Conflict(f"the new passphrase opens the vault ({new}), but {exc.message}") from None
    return old.key, new
