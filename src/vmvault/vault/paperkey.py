"""Recovery keys on paper: 32 random bytes printed as four lines of base32, each line with
a checksum of its own so that a typo is caught on the line where it was made.

What is printed (``encode``)::

    vmvault recovery key
    vault 0123456789abcdef0123456789abcdef, key keys/3fa9c0d1e2b4a6f8
    1: ABCD EFGH IJKL MNOP  QR
    2: ...

Each numbered line holds 10 bytes (16 base32 characters in groups of four) and a 2-character
check: the first 10 bits of BLAKE3 of the line's number and its bytes, so a changed
character, a swapped pair or a line typed in the wrong place shows (it slips through with a
chance of 1 in 1024, and the key's own 8-byte checksum, the last 8 bytes of the fourth line,
catches that). Reading (``decode``) forgives case, spaces, dashes and the digits 0, 1 and 8
typed for the letters O, I and B (base32 has no 0, 1 or 8).
"""

from __future__ import annotations

import base64
import os
import re

import blake3

from vmvault.errors import UsageError

SECRET_SIZE = 32
HEADER = "vmvault recovery key"
LINES = 4
LINE_BYTES = 10  # 16 base32 characters, no padding
_SUM_SIZE = LINES * LINE_BYTES - SECRET_SIZE  # the whole key's checksum: 8 bytes
_CHECK_CHARS = 2
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_LOOKALIKES = str.maketrans({"0": "O", "1": "I", "8": "B"})
_NUMBERED = re.compile(r"^\s*(\d{1,3})\s*[:.)]\s*(.*)$")  # no int() of 5000 digits


class RecoveryKeyInvalid(UsageError):
    """Text that should be a recovery key and is not: a typo, a line missing."""

    code = "recovery_key_invalid"


def new_secret() -> bytes:
    return os.urandom(SECRET_SIZE)


def kdf_input(secret: bytes) -> str:
    """What a recovery key slot's KDF is given: the secret's canonical text (base32), so a
    recovery key slot is wrapped exactly as a passphrase slot is."""
    return base64.b32encode(secret).decode().rstrip("=")


def _whole_sum(secret: bytes) -> bytes:
    return blake3.blake3(b"vmvault-recovery-key" + secret).digest()[:_SUM_SIZE]


def _line_check(number: int, data: bytes) -> str:
    bits = int.from_bytes(blake3.blake3(bytes([number]) + data).digest()[:2], "big") >> 6
    return _ALPHABET[bits >> 5] + _ALPHABET[bits & 31]


def encode(secret: bytes, vault_id: str, slot: str) -> str:
    """The recovery key as printed: a header naming the vault and its key slot, four lines."""
    if len(secret) != SECRET_SIZE:
        raise ValueError(f"a recovery key is {SECRET_SIZE} bytes")
    payload = secret + _whole_sum(secret)
    lines = [HEADER, f"vault {vault_id}, key {slot}"]
    for number in range(1, LINES + 1):
        data = payload[(number - 1) * LINE_BYTES : number * LINE_BYTES]
        text = base64.b32encode(data).decode()
        groups = " ".join(text[i : i + 4] for i in range(0, len(text), 4))
        lines.append(f"{number}: {groups}  {_line_check(number, data)}")
    return "\n".join(lines) + "\n"


def looks_like_one(text: str) -> bool:
    """Whether ``text`` (a passphrase file's content, say) is meant as a recovery key: it
    starts with the header, or has numbered lines. A passphrase is one line of anything."""
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].strip().lower().startswith(HEADER):
        return True
    return sum(1 for line in lines if _NUMBERED.match(line)) >= 2


def decode(text: str) -> bytes:
    """The secret of a printed recovery key; ``RecoveryKeyInvalid`` naming the line at fault."""
    found: list[tuple[int, str]] = []
    for position, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.lower().startswith(("vmvault", "vault ", "#")):
            continue
        match = _NUMBERED.match(stripped)
        if match is None:  # named by its place, never quoted: it may be part of a secret
            raise RecoveryKeyInvalid(f"recovery key: line {position} of the text is not numbered")
        found.append((int(match.group(1)), match.group(2)))
    if [number for number, _ in found] != list(range(1, LINES + 1)):
        raise RecoveryKeyInvalid(
            f"recovery key: lines {', '.join(str(n) for n, _ in found) or 'none'} found, "
            f"1 to {LINES} expected in order"
        )
    payload = b""
    for number, body in found:
        chars = re.sub(r"[\s\-]", "", body).upper().translate(_LOOKALIKES)
        data_chars = LINE_BYTES * 8 // 5
        if len(chars) != data_chars + _CHECK_CHARS or any(c not in _ALPHABET for c in chars):
            raise RecoveryKeyInvalid(
                f"recovery key line {number}: {data_chars + _CHECK_CHARS} letters A-Z and "
                f"digits 2-7 expected, found {len(chars)} characters"
            )
        data = base64.b32decode(chars[:data_chars])
        if _line_check(number, data) != chars[data_chars:]:
            raise RecoveryKeyInvalid(
                f"recovery key line {number} has a typo (its checksum does not match)"
            )
        payload += data
    secret, whole = payload[:SECRET_SIZE], payload[SECRET_SIZE:]
    if _whole_sum(secret) != whole:
        raise RecoveryKeyInvalid("recovery key: its checksum does not match (a typo?)")
    return secret
