"""The vault's keys on a local vault (vault/keyslots.py, vault/keyring.py, app/keys.py):
several passphrases, a changed passphrase, removals, a recovery key on paper, a vault made
before key slots, and a change killed at each step."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from support.azuritekit import AzureVault
from support.cli import PASSPHRASE, run_cli
from support.s3kit import S3Vault
from vmvault import testdisk
from vmvault.app import keys
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_verify
from vmvault.app.vaults import init_vault
from vmvault.backends.local import LocalBackend
from vmvault.backends.url import open_backend
from vmvault.engine.check import check_vault
from vmvault.errors import Conflict, NotFound, WrongPassphrase
from vmvault.vault import keyring
from vmvault.vault.paperkey import RecoveryKeyInvalid
from vmvault.vault.vault import Vault

TINY_SCRYPT = {"n": 2**4, "r": 1, "p": 1}  # the KDF's cost is not under test here


def _ctx(root: Path, passphrase: str = PASSPHRASE) -> Context:
    return Context(
        str(root / "vault"), f"sqlite:///{root / 'catalog.db'}", known_passphrase=passphrase
    )


def _opened_with(root: Path, passphrase: str) -> str | None:
    """The key slot a passphrase opens the vault with (None: it does not open it)."""
    try:
        vault = _ctx(root, passphrase).open_vault(load_index=False)
    except WrongPassphrase:
        return None
    assert vault.key_slot is not None
    return vault.key_slot.id


@pytest.fixture
def root(tmp_path: Path) -> Path:
    init_vault(_ctx(tmp_path), scrypt=TINY_SCRYPT)
    return tmp_path


def test_several_passphrases_open_the_same_vault(root: Path) -> None:
    alice = keys.add_key(_ctx(root), "alice's passphrase", label="alice")["added"]
    bob = keys.add_key(_ctx(root, "alice's passphrase"), "bob's passphrase", label="bob")["added"]
    assert _opened_with(root, PASSPHRASE) == "default"
    assert _opened_with(root, "alice's passphrase") == alice
    assert _opened_with(root, "bob's passphrase") == bob
    assert _opened_with(root, "mallory's guess") is None
    listed = keys.list_keys(_ctx(root, "bob's passphrase"))
    assert listed["current"] == bob
    rows = {k["id"]: k for k in listed["keys"]}
    assert list(rows) == ["default", *sorted([alice, bob])]
    assert rows[alice]["label"] == "alice" and rows[bob]["current"]
    assert all(k["kind"] == "passphrase" and k["kdf"] == TINY_SCRYPT for k in rows.values())
    # The same master keys behind each: what one admin writes, another reads.
    first = _ctx(root, "alice's passphrase").open_vault(load_index=False)
    second = _ctx(root, "bob's passphrase").open_vault(load_index=False)
    assert first.shares_keys(second)
    assert "alice's" not in json.dumps(listed) and "bob's" not in json.dumps(listed)


def test_passwd_changes_only_the_key_in_use(root: Path) -> None:
    alice = keys.add_key(_ctx(root), "alice 1", label="alice")["added"]
    changed = keys.change_passphrase(_ctx(root, "alice 1"), "alice 2")
    assert changed["removed"] == alice and changed["added"] != alice
    assert _opened_with(root, "alice 1") is None
    assert _opened_with(root, "alice 2") == changed["added"]
    assert _opened_with(root, PASSPHRASE) == "default"  # the other admin's key is untouched
    rows = {k["id"]: k for k in keys.list_keys(_ctx(root))["keys"]}
    assert set(rows) == {"default", changed["added"]} and rows[changed["added"]]["label"] == "alice"
    # The first key changes too, like any other.
    keys.change_passphrase(_ctx(root), "new default")
    assert _opened_with(root, PASSPHRASE) is None and _opened_with(root, "new default")


def test_removal_never_of_the_last_key_nor_silently_of_ones_own(root: Path) -> None:
    with pytest.raises(Conflict, match="you opened the vault with"):
        keys.remove_key(_ctx(root), "default")
    with pytest.raises(Conflict, match="last key"):
        keys.remove_key(_ctx(root), "default", force=True)
    bob = keys.add_key(_ctx(root), "bob", label="bob")["added"]
    with pytest.raises(NotFound):
        keys.remove_key(_ctx(root), "ffff")
    assert keys.remove_key(_ctx(root), bob[:6])["removed"] == bob  # a unique start will do
    assert _opened_with(root, "bob") is None
    bob = keys.add_key(_ctx(root), "bob", label="bob")["added"]
    keys.remove_key(_ctx(root), "default", force=True)  # one's own, with --force, another left
    assert _opened_with(root, PASSPHRASE) is None and _opened_with(root, "bob") == bob
    with pytest.raises(Conflict, match="last key"):
        keys.remove_key(_ctx(root, "bob"), bob, force=True)


class _RacingBackend(LocalBackend):
    """Deleting ``victim`` also deletes ``other``: what another admin removing ``other`` at
    the same moment does."""

    def __init__(self, root: Path, victim: str, other: str) -> None:
        super().__init__(root)
        self.victim, self.other = victim, other

    def delete(self, key: str) -> None:
        super().delete(key)
        if key == self.victim:
            super().delete(self.other)


def test_two_removals_at_once_leave_a_key(root: Path) -> None:
    bob = "keys/" + keys.add_key(_ctx(root), "bob")["added"]
    backend = _RacingBackend(root / "vault", victim=bob, other="keys/default")
    vault = Vault.open(backend, PASSPHRASE, load_index=False)
    with pytest.raises(Conflict, match="another was removed meanwhile"):
        keyring.remove_slot(vault, bob)
    assert _opened_with(root, "bob") == bob.removeprefix("keys/")  # put back


def test_a_recovery_key_opens_the_vault_and_gives_a_passphrase_back(root: Path) -> None:
    exported = keys.export_recovery_key(_ctx(root))
    paper = exported["paper"]
    assert exported["vault_id"] in paper and exported["added"] in paper
    # Every passphrase is lost: the recovery key opens the vault, and gives it a new one.
    keys.change_passphrase(_ctx(root), "forgotten")
    assert _opened_with(root, paper) == exported["added"]
    with pytest.raises(Conflict, match="recovery key"):
        keys.change_passphrase(_ctx(root, paper), "new")
    added = keys.add_key(_ctx(root, paper), "remembered", label="after recovery")["added"]
    assert _opened_with(root, "remembered") == added
    # A passphrase file holding it, as printed, opens it too (every command takes one).
    paper_file = root / "paper.txt"
    paper_file.write_text(paper)
    from_file = Context(str(root / "vault"), passphrase_file=str(paper_file))
    assert from_file.open_vault(load_index=False).key_slot.kind == "recovery"  # type: ignore[union-attr]
    # A typo is named, not taken for a wrong key.
    line = next(x for x in paper.splitlines() if x.startswith("2: "))
    typo = "2: " + ("B" if line[3] == "A" else "A") + line[4:]
    with pytest.raises(RecoveryKeyInvalid, match="line 2"):
        _opened_with(root, paper.replace(line, typo))
    # Revoked: it no longer opens the vault.
    keys.remove_key(_ctx(root, "remembered"), exported["added"])
    with pytest.raises(WrongPassphrase, match="wrong recovery key"):
        _ctx(root, paper).open_vault(load_index=False)


def _version_1_key_file(passphrase: str, vault: Vault) -> bytes:
    """``keys/default`` as vmvault wrote it before key slots (docs/FORMAT.md, version 1)."""
    salt = os.urandom(16)
    kek = Scrypt(salt=salt, length=32, **TINY_SCRYPT).derive(passphrase.encode())
    secret = json.dumps(
        {
            "encryption_key": base64.b64encode(vault.keys.encryption_key).decode(),
            "id_key": base64.b64encode(vault.keys.id_key).decode(),
            "vault_id": vault.config.vault_id,
        }
    ).encode()
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, secret, b"vmvault-key-v1")
    doc = {
        "version": 1,
        "kdf": {"name": "scrypt", **TINY_SCRYPT, "salt": base64.b64encode(salt).decode()},
        "cipher": "aes-256-gcm",
        "wrapped": base64.b64encode(wrapped).decode(),
    }
    return json.dumps(doc, indent=2).encode()


def test_a_vault_made_before_key_slots_opens_and_migrates(root: Path) -> None:
    image = root / "disk.img"
    testdisk.create_disk(image, 4 * testdisk.MiB, seed=3, jobs=1)
    point = run_backup(_ctx(root), "vm", [DiskSpec("os", str(image))])
    backend = LocalBackend(root / "vault")
    backend.put("keys/default", _version_1_key_file(PASSPHRASE, _ctx(root).open_vault()))
    assert _opened_with(root, PASSPHRASE) == "default"
    [row] = keys.list_keys(_ctx(root))["keys"]
    assert row["version"] == 1 and row["created"] is not None and row["label"] == ""
    # A second key beside the old one, then the old one's passphrase changed: migrated.
    keys.add_key(_ctx(root), "second")
    changed = keys.change_passphrase(_ctx(root), "changed")
    assert not backend.exists("keys/default")
    assert {k["version"] for k in keys.list_keys(_ctx(root, "changed"))["keys"]} == {2}
    assert _opened_with(root, PASSPHRASE) is None
    assert _opened_with(root, "changed") == changed["added"]
    _, reports = run_verify(_ctx(root, "second"), point["id"])
    assert reports and all(not r.damaged and r.bytes_verified for r in reports)


# A process that changes a passphrase (or removes a key) and is killed (SIGKILL) at one
# moment of it: after writing the new slot, just before the old one's delete, right after.
KILLED_CHANGE = """
import os, signal, sys
from vmvault.backends.local import LocalBackend
from vmvault.backends.url import open_backend
from vmvault.engine.check import check_vault
from vmvault.vault import keyring
from vmvault.vault.vault import Vault

root, passphrase, action, moment = sys.argv[1:5]

class KilledAt(LocalBackend):
    def put(self, key, data):
        super().put(key, data)
        if moment == "after-new-slot" and key.startswith("keys/"):
            os.kill(os.getpid(), signal.SIGKILL)

    def delete(self, key):
        if moment == "before-delete":
            os.kill(os.getpid(), signal.SIGKILL)
        super().delete(key)
        if moment == "after-delete":
            os.kill(os.getpid(), signal.SIGKILL)

vault = Vault.open(KilledAt(root), passphrase, load_index=False)
if action == "passwd":
    keyring.replace_slot(vault, "the new one")
else:
    keyring.remove_slot(vault, keyring.find_slot(vault, action))
"""


def _killed(root: Path, passphrase: str, action: str, moment: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", KILLED_CHANGE, str(root / "vault"), passphrase, action, moment],
        capture_output=True,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr


@pytest.mark.parametrize("moment", ["after-new-slot", "before-delete", "after-delete"])
def test_a_passphrase_change_killed_at_any_step_leaves_a_vault_that_opens(
    root: Path, moment: str
) -> None:
    bob = keys.add_key(_ctx(root), "bob")["added"]
    _killed(root, PASSPHRASE, "passwd", moment)
    old, new = _opened_with(root, PASSPHRASE), _opened_with(root, "the new one")
    assert new is not None  # the new slot is written first
    if moment == "after-delete":
        assert old is None  # done: only the answer was lost
    else:
        assert old == "default"  # both open it until the change is done again
        keys.change_passphrase(_ctx(root), "the newest one")
        assert _opened_with(root, PASSPHRASE) is None
    assert _opened_with(root, "bob") == bob  # another admin's key is never touched


def test_a_removal_killed_after_its_delete_leaves_the_other_keys(root: Path) -> None:
    bob = keys.add_key(_ctx(root), "bob")["added"]
    _killed(root, PASSPHRASE, bob, "after-delete")
    assert _opened_with(root, "bob") is None
    assert _opened_with(root, PASSPHRASE) == "default"


def test_the_command_line(tmp_path: Path) -> None:
    env = {
        "VMVAULT_VAULT": str(tmp_path / "vault"),
        "VMVAULT_CATALOG": f"sqlite:///{tmp_path}/c.db",
    }
    init = run_cli("init", env=env)
    assert init.returncode == 0 and "backups are lost too" in init.stdout
    assert "vault key export --paper" in init.stdout
    added = run_cli(
        "vault",
        "key",
        "add",
        "--label",
        "alice",
        "--json",
        env={**env, "VMVAULT_NEW_PASSPHRASE": "alice pass"},
    )
    assert added.returncode == 0, added.stderr
    assert "alice pass" not in added.stdout + added.stderr
    paper_file = tmp_path / "paper.txt"
    exported = run_cli("vault", "key", "export", "--paper", "-o", str(paper_file), env=env)
    assert exported.returncode == 0 and "revokes it" in exported.stderr
    assert os.stat(paper_file).st_mode & 0o777 == 0o600
    listed = run_cli("vault", "key", "list", "--passphrase-file", str(paper_file), env=env)
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert ["passphrase", "alice"] in [row[1:3] for row in rows]
    [recovery] = [row for row in rows if row[1:2] == ["recovery"]]
    assert recovery[-1] == "yes"  # the key this command opened the vault with
    imported = run_cli(
        "vault",
        "key",
        "import",
        "--paper",
        str(paper_file),
        "--json",
        env={**env, "VMVAULT_PASSPHRASE": "", "VMVAULT_NEW_PASSPHRASE": "after recovery"},
    )
    assert imported.returncode == 0, imported.stderr
    assert _opened_with(tmp_path, "after recovery") == json.loads(imported.stdout)["added"]
    wrong = run_cli("vault", "key", "list", env={**env, "VMVAULT_PASSPHRASE": "nope"})
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines() == ["error: wrong passphrase for this vault"]


@pytest.fixture(params=["s3", "azure"])
def store_url(request: pytest.FixtureRequest) -> str:
    """A vault URL in a fresh bucket or container, the store's variables set."""
    if request.param == "s3":
        request.applymarker(pytest.mark.s3)
        s3: S3Vault = request.getfixturevalue("s3_vault")
        return s3.url("keys")
    request.applymarker(pytest.mark.azure)
    azure: AzureVault = request.getfixturevalue("azure_vault")
    return azure.url("keys")


def test_keys_on_an_object_store_with_its_local_cache(store_url: str, tmp_path: Path) -> None:
    """Slots are new objects (creation-only puts), removals deletes; a host whose cache holds
    a removed slot's copy still refuses its passphrase."""

    def ctx(passphrase: str) -> Context:
        return Context(store_url, f"sqlite:///{tmp_path}/c.db", known_passphrase=passphrase)

    init_vault(ctx(PASSPHRASE), scrypt=TINY_SCRYPT)
    alice = keys.add_key(ctx(PASSPHRASE), "alice", label="alice")["added"]
    paper = keys.export_recovery_key(ctx("alice"))["paper"]
    assert ctx("alice").open_vault(load_index=False).key_slot.id == alice  # type: ignore[union-attr]
    assert ctx(PASSPHRASE).open_vault(load_index=False).key_slot.id == "default"  # type: ignore[union-attr]
    # Changed from another host (no cache here): this host's cache keeps keys/default's copy.
    elsewhere = ctx(PASSPHRASE)
    elsewhere.cache = False
    keys.change_passphrase(elsewhere, "changed")
    with pytest.raises(WrongPassphrase):
        ctx(PASSPHRASE).open_vault(load_index=False)
    assert ctx("changed").open_vault(load_index=False).key_slot is not None
    assert ctx(paper).open_vault(load_index=False).key_slot.kind == "recovery"  # type: ignore[union-attr]
    store = open_backend(store_url, cache=False)
    assert len(list(store.list("keys/"))) == 3 and not store.exists("keys/default")


def test_check_names_a_damaged_key(root: Path) -> None:
    recovery = keys.export_recovery_key(_ctx(root))["added"]
    slot = root / "vault" / "keys" / recovery
    slot.write_bytes(slot.read_bytes()[:100])
    report = check_vault(_ctx(root).open_vault())
    [problem] = report.problems
    assert (problem.severity, problem.kind, problem.object) == (
        "warning",
        "key_unreadable",
        f"keys/{recovery}",
    )
    [row] = [k for k in keys.list_keys(_ctx(root))["keys"] if k["id"] == recovery]
    assert row["kind"] is None and "malformed" in row["problem"]
