"""Recovery keys on paper (vault/paperkey.py): what is printed reads back, and a typo is
caught, on its own line where the line's checksum sees it."""

from __future__ import annotations

import os
import re

import pytest

from vmvault.vault import paperkey
from vmvault.vault.paperkey import RecoveryKeyInvalid

VAULT_ID = "0123456789abcdef0123456789abcdef"
SECRET = bytes(range(32))
PRINTED = paperkey.encode(SECRET, VAULT_ID, "keys/3fa9c0d1e2b4a6f8")


def _key_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^\d:", line)]


def test_what_is_printed_reads_back() -> None:
    for _ in range(50):
        secret = os.urandom(32)
        assert paperkey.decode(paperkey.encode(secret, VAULT_ID, "keys/x")) == secret
    lines = PRINTED.splitlines()
    assert lines[0] == "vmvault recovery key" and VAULT_ID in lines[1] and len(lines) == 6
    assert all(re.fullmatch(r"\d: ([A-Z2-7]{4} ){3}[A-Z2-7]{4}  [A-Z2-7]{2}", x) for x in lines[2:])


def test_how_a_person_types_it_is_forgiven() -> None:
    """Lower case, no spaces, dashes, no header, and 0, 1, 8 for O, I, B."""
    typed = "\n".join(
        line.lower().replace(" ", "-").replace("o", "0").replace("i", "1").replace("b", "8")
        for line in _key_lines(PRINTED)
    )
    assert paperkey.looks_like_one(typed)
    assert paperkey.decode(typed) == SECRET


def test_every_single_character_typo_is_caught_mostly_on_its_line() -> None:
    caught_on_line = 0
    typos = 0
    lines = PRINTED.splitlines()
    for index in range(2, len(lines)):
        number, body = lines[index].split(": ", 1)
        for position, char in enumerate(body):
            if char == " ":
                continue
            for other in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567":
                if other == char:
                    continue
                typo = body[:position] + other + body[position + 1 :]
                text = "\n".join([*lines[:index], f"{number}: {typo}", *lines[index + 1 :]])
                typos += 1
                with pytest.raises(RecoveryKeyInvalid) as caught:
                    paperkey.decode(text)
                caught_on_line += f"line {number} has a typo" in caught.value.message
    # The rest (about 1 in 1024) is caught by the key's own checksum.
    assert typos == 4 * 18 * 31 and caught_on_line >= typos * 0.99


def test_lines_swapped_missing_or_mangled_are_refused() -> None:
    lines = _key_lines(PRINTED)
    bodies = [line.split(": ", 1)[1] for line in lines]
    swapped = [f"1: {bodies[0]}", f"2: {bodies[2]}", f"3: {bodies[1]}", f"4: {bodies[3]}"]
    with pytest.raises(RecoveryKeyInvalid, match="line 2 has a typo"):
        paperkey.decode("\n".join(swapped))
    with pytest.raises(RecoveryKeyInvalid, match="lines 1, 2, 4 found"):
        paperkey.decode("\n".join(lines[:2] + lines[3:]))
    with pytest.raises(RecoveryKeyInvalid, match="line 3: 18 letters"):
        paperkey.decode("\n".join([*lines[:2], lines[2][:-3], lines[3]]))
    with pytest.raises(RecoveryKeyInvalid, match="line 7 of the text is not numbered"):
        paperkey.decode(PRINTED + "a stray line\n")


def test_a_passphrase_is_not_taken_for_a_recovery_key() -> None:
    for passphrase in ("test passphrase", "1: one line with a number", "x" * 200, "a\nb"):
        assert not paperkey.looks_like_one(passphrase)
    assert paperkey.looks_like_one(PRINTED)
    assert paperkey.looks_like_one(PRINTED.upper())  # the header in any case
