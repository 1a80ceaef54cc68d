"""Keys and authenticated encryption.

A random 64-byte master secret is split into an encryption key (AES-256-GCM) and an id key
(keyed BLAKE3 for chunk ids, so ids reveal nothing about the plaintext to someone without
the key). The secret is stored wrapped by a key derived from the passphrase with scrypt, a
memory-hard KDF, so a stolen vault cannot be brute-forced cheaply.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vmvault.errors import CorruptObject, UnsupportedFormat, WrongPassphrase

NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
KEY_FILE_VERSION = 1
_WRAP_AAD = b"vmvault-key-v1"

# scrypt cost: 2**15 * 8 * 128 bytes = 32 MiB of memory and ~0.1 s per attempt here.
DEFAULT_SCRYPT = {"n": 2**15, "r": 8, "p": 1}


@dataclass(frozen=True)
class MasterKeys:
    encryption_key: bytes
    id_key: bytes
    vault_id: str

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """The content address of a plaintext: keyed BLAKE3, 32 bytes."""
        digest: bytes = blake3.blake3(data, key=self.id_key).digest()
        return digest

    def cipher(self) -> Cipher:
        return Cipher(self.encryption_key)


class Cipher:
    """AES-256-GCM with a fresh random 96-bit nonce per message.

    Random nonces are safe up to about 2**32 messages per key (NIST SP 800-38D); one
    message is one chunk of 64 KiB, so that is 256 TiB of unique chunks per vault.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def seal_parts(
        self, plaintext: bytes | bytearray | memoryview, aad: bytes
    ) -> tuple[bytes, bytes]:
        """Like :meth:`seal`, as (nonce, ciphertext) so callers can write them without a copy."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce, self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        if len(sealed) < SEAL_OVERHEAD:
            raise CorruptObject(f"{what}: too short to be an encrypted object")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], aad)
        except InvalidTag:
            raise CorruptObject(f"{what}: authentication failed (damaged or tampered)") from None


def _kek(passphrase: str, salt: bytes, params: dict[str, int]) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"])
    return kdf.derive(passphrase.encode("utf-8"))


def new_master_keys(vault_id: str) -> MasterKeys:
    return MasterKeys(os.urandom(32), os.urandom(32), vault_id)


def wrap_keys(keys: MasterKeys, passphrase: str, scrypt: dict[str, int] | None = None) -> bytes:
    """Serialise the key file: KDF parameters in clear, the keys sealed under the KEK."""
    params = dict(scrypt or DEFAULT_SCRYPT)
    salt = os.urandom(16)
    secret = json.dumps(
        {
            "encryption_key": base64.b64encode(keys.encryption_key).decode(),
            "id_key": base64.b64encode(keys.id_key).decode(),
            "vault_id": keys.vault_id,
        }
    ).encode()
    sealed = Cipher(_kek(passphrase, salt, params)).seal(secret, _WRAP_AAD)
    doc = {
        "version": KEY_FILE_VERSION,
        "kdf": {"name": "scrypt", **params, "salt": base64.b64encode(salt).decode()},
        "cipher": "aes-256-gcm",
        "wrapped": base64.b64encode(sealed).decode(),
    }
    return json.dumps(doc, indent=2).encode()


def unwrap_keys(key_file: bytes, passphrase: str, vault_id: str) -> MasterKeys:
    try:
        doc: dict[str, Any] = json.loads(key_file)
        kdf = doc["kdf"]
        if doc["version"] != KEY_FILE_VERSION or kdf["name"] != "scrypt":
            raise UnsupportedFormat(f"key file version {doc['version']} is not supported")
        salt = base64.b64decode(kdf["salt"])
        sealed = base64.b64decode(doc["wrapped"])
        params = {"n": int(kdf["n"]), "r": int(kdf["r"]), "p": int(kdf["p"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"key file is malformed: {exc}") from None
    try:
        secret = Cipher(_kek(passphrase, salt, params)).open(sealed, _WRAP_AAD, "key file")
    except CorruptObject:
        raise WrongPassphrase("wrong passphrase for this vault") from None
    fields = json.loads(secret)
    keys = MasterKeys(
        base64.b64decode(fields["encryption_key"]),
        base64.b64decode(fields["id_key"]),
        fields["vault_id"],
    )
    if keys.vault_id != vault_id:
        raise CorruptObject("key file belongs to another vault")
    return keys
