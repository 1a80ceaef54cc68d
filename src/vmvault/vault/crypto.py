"""Keys and authenticated encryption.

A random 64-byte master secret is split into an encryption key (AES-256-GCM) and an id key
(keyed BLAKE3 for chunk ids, so ids reveal nothing about the plaintext to someone without
the key). The secret is stored wrapped by a key derived from a passphrase with scrypt, a
memory-hard KDF, so a stolen vault cannot be brute-forced cheaply; a vault may hold several
such wrappings of the same secret (key slots: vault/keyslots.py).
"""

from __future__ import annotations

import base64
import functools
import json
import os
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vmvault.errors import CorruptObject, WrongPassphrase

NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE

# scrypt cost: 2**15 * 8 * 128 bytes = 32 MiB of memory and ~0.1 s per attempt here.
DEFAULT_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
# The most a key file may ask for: n * r * p at most 16 times the default's, so at most
# 512 MiB of memory and a couple of seconds. The parameters are read before the passphrase
# is checked, so without a bound a damaged or hostile key file (n = 2**40, p = 2**16) would
# ask for terabytes or for hours instead of failing.
MAX_SCRYPT_COST = 16 * 2**15 * 8


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


def check_scrypt(params: dict[str, Any]) -> dict[str, int]:
    """The scrypt parameters ``n``, ``r``, ``p`` if they are ones a vault may use; else
    ValueError saying why (n a power of two from 2, r and p from 1, ``MAX_SCRYPT_COST``)."""
    n, r, p = (params.get(k) for k in ("n", "r", "p"))
    if type(n) is not int or type(r) is not int or type(p) is not int:  # no bool, no 8.0
        raise ValueError("scrypt parameters n, r and p must be whole numbers")
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError(f"scrypt parameters n={n}, r={r}, p={p} are invalid")
    if n * r * p > MAX_SCRYPT_COST:
        raise ValueError(
            f"scrypt parameters n={n}, r={r}, p={p} ask for more than {MAX_SCRYPT_COST} "
            "(n * r * p), 16 times the default: refused"
        )
    return {"n": n, "r": r, "p": p}


def _kek(passphrase: str, salt: bytes, params: dict[str, int]) -> bytes:
    """The key-encryption key, derived once per process for a passphrase, salt and
    parameters: a server opens its vault for each request and a worker for each job, and
    scrypt is made to be slow (0.1 s of CPU and 32 MiB of memory each time)."""
    return _derive_kek(passphrase, salt, params["n"], params["r"], params["p"])


@functools.lru_cache(maxsize=16)
def _derive_kek(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def new_master_keys(vault_id: str) -> MasterKeys:
    return MasterKeys(os.urandom(32), os.urandom(32), vault_id)


def wrap_secret(
    keys: MasterKeys, passphrase: str, scrypt: dict[str, int] | None, aad: bytes
) -> dict[str, Any]:
    """The master keys sealed under a key derived from ``passphrase``: the ``kdf``,
    ``cipher`` and ``wrapped`` fields of a key slot (vault/keyslots.py)."""
    params = check_scrypt(scrypt or DEFAULT_SCRYPT)  # a vault its own reader would refuse: never
    salt = os.urandom(16)
    secret = json.dumps(
        {
            "encryption_key": base64.b64encode(keys.encryption_key).decode(),
            "id_key": base64.b64encode(keys.id_key).decode(),
            "vault_id": keys.vault_id,
        }
    ).encode()
    sealed = Cipher(_kek(passphrase, salt, params)).seal(secret, aad)
    return {
        "kdf": {"name": "scrypt", **params, "salt": base64.b64encode(salt).decode()},
        "cipher": "aes-256-gcm",
        "wrapped": base64.b64encode(sealed).decode(),
    }


def kdf_of(doc: dict[str, Any]) -> dict[str, int]:
    """A key slot's scrypt parameters, checked (``check_scrypt``); ValueError if unusable."""
    kdf = doc.get("kdf")
    if not isinstance(kdf, dict):
        raise ValueError("kdf is not an object")
    if kdf.get("name") != "scrypt":
        raise ValueError(f"kdf {str(kdf.get('name'))[:20]} is not supported")
    return check_scrypt(kdf)


def b64_field(value: object, field: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{field} is not base64 text")
    data = base64.b64decode(value, validate=True)  # binascii.Error is a ValueError
    if size is not None and len(data) != size:
        raise ValueError(f"{field} holds {len(data)} bytes, not {size}")
    return data


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what} is not a JSON object")
    return doc


def unwrap_secret(doc: dict[str, Any], passphrase: str, vault_id: str, aad: bytes) -> MasterKeys:
    """The master keys from a key slot's document: `WrongPassphrase` if the passphrase does
    not open them, `CorruptObject` for a slot that is malformed (or asks for absurd scrypt
    work, refused before any is done)."""
    try:
        params = kdf_of(doc)
        salt = b64_field(doc["kdf"].get("salt"), "salt")
        sealed = b64_field(doc.get("wrapped"), "wrapped")
    except ValueError as exc:  # base64, UTF-8 and the checks above
        raise CorruptObject(f"key file is malformed: {exc}") from None
    try:
        secret = Cipher(_kek(passphrase, salt, params)).open(sealed, aad, "key file")
    except CorruptObject:
        raise WrongPassphrase("wrong passphrase for this vault") from None
    # The passphrase opened it: what it holds can only be damaged, never a wrong guess.
    try:
        fields = json_object(secret, "wrapped keys")
        found_id = fields.get("vault_id")
        if not isinstance(found_id, str):
            raise ValueError("vault_id is not text")
        keys = MasterKeys(
            b64_field(fields.get("encryption_key"), "encryption_key", 32),
            b64_field(fields.get("id_key"), "id_key", 32),
            found_id,
        )
    except ValueError as exc:
        raise CorruptObject(f"key file is malformed: {exc}") from None
    if keys.vault_id != vault_id:
        raise CorruptObject("key file belongs to another vault")
    return keys
