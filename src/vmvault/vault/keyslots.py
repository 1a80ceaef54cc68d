"""Key slots: the objects under ``keys/``, each the vault's master keys wrapped under one
passphrase or one recovery key (docs/FORMAT.md, "Keys").

A vault opens with any of them. Each slot is its own object, written once and only ever
deleted: the first, ``keys/default``, by ``init`` before the config; the others under a new
name (``keys/<16 hex>``) with a creation-only put. The set of slots is the listing of
``keys/``, so adding one is one atomic write and removing one is one delete, with no
document to keep in step (and nothing rewritten in place, which S3 and Azure with
immutability would keep as old versions).

Version 1 (a vault made before key slots): ``keys/default`` alone, no kind, no label.
Version 2 adds ``kind`` (``passphrase`` or ``recovery``) and ``about`` (its label and
creation time, sealed under the vault's key: only the KDF parameters are in the clear), and
binds the wrapped keys to the slot's name and kind.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from vmvault.backends.base import Backend
from vmvault.errors import (
    CorruptObject,
    ObjectMissing,
    UnsupportedFormat,
    VmvaultError,
    WrongPassphrase,
)
from vmvault.vault import paperkey
from vmvault.vault.crypto import (
    MasterKeys,
    b64_field,
    json_object,
    kdf_of,
    unwrap_secret,
    wrap_secret,
)

KEYS_PREFIX = "keys/"
DEFAULT_SLOT = "keys/default"
SLOT_VERSION = 2
Kind = Literal["passphrase", "recovery"]
KINDS: tuple[Kind, ...] = ("passphrase", "recovery")
_AAD_V1 = b"vmvault-key-v1"


def _wrap_aad(key: str, kind: str) -> bytes:
    return f"vmvault-key-v2:{key}:{kind}".encode()


def _about_aad(key: str) -> bytes:
    return f"vmvault-key-about-v2:{key}".encode()


@dataclass(frozen=True)
class KeySlot:
    """One parsed slot object (nothing opened yet)."""

    key: str  # its object key, ``keys/<id>``
    version: int
    kind: Kind
    doc: dict[str, Any]

    @property
    def id(self) -> str:
        return self.key.removeprefix(KEYS_PREFIX)

    @property
    def kdf(self) -> dict[str, int]:
        return kdf_of(self.doc)

    def unlock(self, secret: str, vault_id: str) -> MasterKeys:
        """The master keys, if ``secret`` (a passphrase, or a recovery key's ``kdf_input``)
        opens this slot (`WrongPassphrase` if not)."""
        aad = _AAD_V1 if self.version == 1 else _wrap_aad(self.key, self.kind)
        return unwrap_secret(self.doc, secret, vault_id, aad)

    def about(self, keys: MasterKeys) -> dict[str, Any]:
        """Its label and creation time (a version 1 slot has neither)."""
        if self.version == 1:
            return {"label": "", "created": None}
        try:
            sealed = b64_field(self.doc.get("about"), "about")
        except ValueError as exc:
            raise CorruptObject(f"{self.key} is malformed: {exc}") from None
        plain = keys.cipher().open(sealed, _about_aad(self.key), self.key)
        try:
            doc = json_object(plain, "about")
        except ValueError as exc:
            raise CorruptObject(f"{self.key} is malformed: {exc}") from None
        label, created = doc.get("label"), doc.get("created")
        if not isinstance(label, str) or not isinstance(created, str):
            raise CorruptObject(f"{self.key} is malformed: no label or creation time")
        return {"label": label, "created": created}


def new_slot_key() -> str:
    return f"{KEYS_PREFIX}{secrets.token_hex(8)}"


def encode(
    keys: MasterKeys,
    secret: str,
    *,
    key: str,
    kind: Kind,
    label: str,
    created: str,
    scrypt: dict[str, int] | None = None,
) -> bytes:
    """A version 2 slot object: ``keys`` wrapped under ``secret`` (KDF: scrypt with
    ``scrypt``, by default the default cost), its label and time sealed under the vault's
    key."""
    about = keys.cipher().seal(
        json.dumps({"label": label, "created": created}).encode(), _about_aad(key)
    )
    doc = {
        "version": SLOT_VERSION,
        "kind": kind,
        **wrap_secret(keys, secret, scrypt, _wrap_aad(key, kind)),
        "about": base64.b64encode(about).decode(),
    }
    return json.dumps(doc, indent=2).encode()


def parse(key: str, data: bytes) -> KeySlot:
    """A slot object read: `CorruptObject` if malformed, `UnsupportedFormat` for another
    version. Its KDF parameters are checked here, before anyone derives with them."""
    try:
        doc = json_object(data, "key file")
        version = doc.get("version")
        if version not in (1, SLOT_VERSION) or type(version) is not int:
            raise UnsupportedFormat(f"key file version {str(version)[:20]} is not supported")
        named = doc.get("kind") if version == SLOT_VERSION else "passphrase"
        kind = next((k for k in KINDS if k == named), None)
        if kind is None:
            raise ValueError(f"kind {str(named)[:20]} is not a key kind")
        kdf_of(doc)
    except ValueError as exc:  # JSON, UTF-8 and the checks above
        raise CorruptObject(f"key file is malformed: {exc}") from None
    return KeySlot(key, version, kind, doc)


def slot_keys(backend: Backend) -> list[str]:
    """The vault's slot objects, ``keys/default`` first (the one a vault made before key
    slots has, and the most likely to open: each wrong slot costs one KDF run)."""
    return sorted(backend.list(KEYS_PREFIX), key=lambda k: (k != DEFAULT_SLOT, k))


def open_keys(backend: Backend, passphrase: str, vault_id: str) -> tuple[MasterKeys, KeySlot]:
    """The master keys and the slot that gave them. ``passphrase`` may be a recovery key as
    printed (``paperkey.looks_like_one``): then only recovery slots are tried, else only
    passphrase slots.

    No slot at all is `ObjectMissing`; when none opens, `WrongPassphrase` if the secret
    was tried and refused, else the first slot's damage (`CorruptObject`)."""
    if paperkey.looks_like_one(passphrase):
        kind, secret = "recovery", paperkey.kdf_input(paperkey.decode(passphrase))
    else:
        kind, secret = "passphrase", passphrase
    keys = slot_keys(backend)
    if not keys:
        raise ObjectMissing(f"the vault has no key ({KEYS_PREFIX} is empty)")
    refused = False
    damaged: list[VmvaultError] = []
    for key in keys:
        try:
            slot = parse(key, backend.get(key))
            if slot.kind == kind:
                return slot.unlock(secret, vault_id), slot
        except WrongPassphrase:
            refused = True
        except (CorruptObject, UnsupportedFormat, ObjectMissing) as exc:
            damaged.append(exc)  # another slot may still open (ObjectMissing: removed since)
    if refused or not damaged:
        what = "recovery key" if kind == "recovery" else "passphrase"
        raise WrongPassphrase(f"wrong {what} for this vault")
    raise damaged[0]
