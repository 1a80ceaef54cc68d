"""The vault's keys as use cases (`vmvault vault key …`): list, add, change the passphrase,
remove, export a recovery key on paper.

Each opens the vault with the context's passphrase (or recovery key) and never sees a
secret it does not need: new passphrases come from the caller, and the only secret
returned is the recovery key ``export_recovery_key`` makes, because it was asked for.
"""

from __future__ import annotations

from typing import Any

from vmvault.app.context import Context
from vmvault.errors import Conflict, UsageError
from vmvault.vault import keyring, paperkey
from vmvault.vault.vault import Vault

RECOVERY_LABEL = "recovery key"


def _open(ctx: Context) -> Vault:
    return ctx.open_vault(load_index=False)


def _id(key: str) -> str:
    return key.removeprefix("keys/")


def check_new_passphrase(passphrase: str) -> str:
    """A passphrase a new key may have: not empty, and not read as a recovery key."""
    if not passphrase:
        raise UsageError("an empty passphrase is not allowed")
    if paperkey.looks_like_one(passphrase):
        raise UsageError("a passphrase may not look like a recovery key (numbered lines)")
    return passphrase


def list_keys(ctx: Context) -> dict[str, Any]:
    vault = _open(ctx)
    current = vault.key_slot.id if vault.key_slot is not None else None
    return {
        "vault_id": vault.config.vault_id,
        "current": current,
        "keys": [slot.to_dict() for slot in keyring.list_slots(vault)],
    }


def add_key(ctx: Context, new_passphrase: str, *, label: str = "") -> dict[str, Any]:
    """Another passphrase for the same vault (another admin; a passphrase again after
    opening with a recovery key)."""
    vault = _open(ctx)
    key = keyring.add_slot(
        vault, check_new_passphrase(new_passphrase), kind="passphrase", label=label
    )
    return {"vault_id": vault.config.vault_id, "added": _id(key), "label": label}


def change_passphrase(ctx: Context, new_passphrase: str) -> dict[str, Any]:
    """The passphrase of the key the vault was opened with, changed (a new slot, then the old
    one removed: the old passphrase no longer opens the vault)."""
    vault = _open(ctx)
    old, new = keyring.replace_slot(vault, check_new_passphrase(new_passphrase))
    return {"vault_id": vault.config.vault_id, "removed": _id(old), "added": _id(new)}


def remove_key(ctx: Context, slot_id: str, *, force: bool = False) -> dict[str, Any]:
    """One key removed; never the last, and the one in use only with ``force`` (whoever
    runs this would lose their own way in)."""
    vault = _open(ctx)
    key = keyring.find_slot(vault, slot_id)
    if vault.key_slot is not None and key == vault.key_slot.key and not force:
        raise Conflict(
            f"{_id(key)} is the key you opened the vault with: to change its passphrase use "
            "`vault key passwd`; to remove it anyway, --force"
        )
    keyring.remove_slot(vault, key)
    return {"vault_id": vault.config.vault_id, "removed": _id(key)}


def export_recovery_key(ctx: Context, *, label: str = RECOVERY_LABEL) -> dict[str, Any]:
    """A new recovery key: a random secret with a key slot of its own, as printable text.

    Made anew at each export (the secret exists nowhere but on the paper); every earlier
    one keeps working until its slot is removed."""
    vault = _open(ctx)
    secret = paperkey.new_secret()
    key = keyring.add_slot(vault, paperkey.kdf_input(secret), kind="recovery", label=label)
    return {
        "vault_id": vault.config.vault_id,
        "added": _id(key),
        "label": label,
        "paper": paperkey.encode(secret, vault.config.vault_id, key),
    }
