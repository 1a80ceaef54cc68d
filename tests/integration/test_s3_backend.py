"""The S3 backend against a real S3 server (SeaweedFS, tests/support/s3kit.py): the backend
contract, a vault's life through the use cases, and the CLI with ``--vault s3://``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli, same_content
from support.s3kit import S3Vault
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point
from vmvault.app.restore import run_restore
from vmvault.app.vaults import init_vault, run_check, run_gc
from vmvault.backends.base import TransientBackendError, put_new
from vmvault.backends.retry import RetryingBackend
from vmvault.backends.s3 import BucketMissing, ObjectExists, S3Backend
from vmvault.backends.url import open_backend, open_s3
from vmvault.errors import CorruptObject, ObjectMissing, UsageError
from vmvault.vault.vault import VaultExists

pytestmark = pytest.mark.s3
MiB = testdisk.MiB


def _backend(vault: S3Vault, prefix: str = "v1") -> S3Backend:
    return S3Backend(vault.bucket, prefix, vault.client)


def test_put_get_ranges_size(s3_vault: S3Vault) -> None:
    backend = _backend(s3_vault)
    backend.put("packs/ab/ab12", b"0123456789")
    backend.put("parts", [b"abc", b"", b"def"])  # a payload in parts is stored joined
    assert backend.get("packs/ab/ab12") == b"0123456789"
    assert backend.get("packs/ab/ab12", 3, 4) == b"3456"
    assert backend.get("packs/ab/ab12", 7) == b"789"
    assert backend.get("packs/ab/ab12", 10) == b""
    assert backend.get("packs/ab/ab12", 2, 0) == b""
    assert backend.get("parts") == b"abcdef"
    assert backend.size("packs/ab/ab12") == 10
    assert backend.modified("packs/ab/ab12") > 1.7e9
    with pytest.raises(CorruptObject):  # a range past the end: a truncated object
        backend.get("packs/ab/ab12", 8, 5)
    backend.put("packs/ab/ab12", b"new")  # a whole replacement
    assert backend.get("packs/ab/ab12") == b"new"


def test_missing_keys_and_delete(s3_vault: S3Vault) -> None:
    backend = _backend(s3_vault)
    assert not backend.exists("nope")
    for call in (
        lambda: backend.get("nope"),
        lambda: backend.get("nope", 1, 2),
        lambda: backend.size("nope"),
        lambda: backend.modified("nope"),
    ):
        with pytest.raises(ObjectMissing):
            call()
    backend.put("x", b"1")
    assert backend.exists("x")
    backend.delete("x")
    backend.delete("x")  # already gone: no error
    assert not backend.exists("x")


def test_list_under_prefix_keeps_vaults_apart(s3_vault: S3Vault) -> None:
    one, two = _backend(s3_vault, "one"), _backend(s3_vault, "team/two")
    for key in ("config", "packs/00/a", "packs/01/b", "points/p1"):
        one.put(key, b"1")
    two.put("config", b"2")
    assert sorted(one.list()) == ["config", "packs/00/a", "packs/01/b", "points/p1"]
    assert sorted(one.list("packs/")) == ["packs/00/a", "packs/01/b"]
    assert list(one.list("nothing/")) == []
    assert list(two.list()) == ["config"]
    assert two.get("config") == b"2"
    assert two.describe() == f"s3://{s3_vault.bucket}/team/two"


def test_many_keys_are_listed_across_pages(s3_vault: S3Vault) -> None:
    backend = _backend(s3_vault)
    keys = [f"packs/{i:04d}" for i in range(1100)]  # more than one 1000-key page
    for key in keys:
        backend.put(key, b"")
    assert sorted(backend.list("packs/")) == keys


def test_creation_only_put_refuses_a_taken_key(s3_vault: S3Vault) -> None:
    backend = _backend(s3_vault)
    backend.create("points/p1", b"first")
    with pytest.raises(ObjectExists):  # SeaweedFS honours If-None-Match: * (412)
        backend.create("points/p1", b"second")
    assert backend.get("points/p1") == b"first"
    assert backend._conditional  # the store took the header: no exists-then-put fallback
    # Through the retry layer and put_new, as the vault writes packs and points: the
    # refusal leaves the other writer's object in place.
    retrying = RetryingBackend(backend)
    put_new(retrying, "points/p2", b"mine")
    with pytest.raises(ObjectExists):
        put_new(retrying, "points/p2", b"theirs")
    assert backend.get("points/p2") == b"mine"


def test_creation_without_conditional_writes_falls_back(s3_vault: S3Vault) -> None:
    # The path of a store that rejects If-None-Match, run against the real server.
    backend = _backend(s3_vault)
    backend._conditional = False
    backend.create("points/p3", b"first")
    with pytest.raises(ObjectExists):
        backend.create("points/p3", b"second")
    assert backend.get("points/p3") == b"first"


class _AnswerLost:
    """The real S3 backend, but the first creation's answer is lost after the object was
    stored (a connection dropped on the way back): the retry then meets its own object."""

    def __init__(self, inner: S3Backend) -> None:
        self.inner, self.lost = inner, False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def create(self, key: str, data: bytes) -> None:
        self.inner.create(key, data)
        if not self.lost:
            self.lost = True
            raise TransientBackendError("connection reset after the put")


def test_a_retried_creation_accepts_its_own_object(s3_vault: S3Vault) -> None:
    backend = _backend(s3_vault)
    retrying = RetryingBackend(_AnswerLost(backend), base_delay=0.01)  # type: ignore[arg-type]
    put_new(retrying, "packs/ab/abcd", b"pack")
    assert backend.get("packs/ab/abcd") == b"pack"
    with pytest.raises(ObjectExists):  # without a failed attempt before: refused
        put_new(retrying, "packs/ab/abcd", b"other")


def test_invalid_keys_and_urls_are_refused(s3_vault: S3Vault) -> None:
    backend = _backend(s3_vault)
    for key in ("../x", "/abs", "a//b", ""):
        with pytest.raises(UsageError):
            backend.put(key, b"")
    for url in ("s3://", "s3:///prefix", "s3://b/../up", "gs://bucket/x"):
        with pytest.raises(UsageError):
            open_backend(url)


def test_errors_from_the_store(s3_vault: S3Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = S3Backend("no-such-bucket-here", "v", s3_vault.client)
    with pytest.raises(BucketMissing):
        missing.check_bucket()
    with pytest.raises(BucketMissing):
        missing.put("x", b"")
    # Wrong credentials: a 403 with a stable code, and the secret in no message.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-123")
    backend = open_backend(s3_vault.url())
    with pytest.raises(Exception) as raised:
        backend.get("config")
    assert getattr(raised.value, "code", None) == "permission_denied"
    assert "wrong-secret-123" not in str(raised.value)
    assert backend.describe() == f"s3://{s3_vault.bucket}/vault"


def test_unreachable_store_is_transient_then_unavailable(
    s3_vault: S3Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support.s3kit import _free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_free_port()}")
    backend = RetryingBackend(open_s3(s3_vault.url()), attempts=2, base_delay=0.01)
    with pytest.raises(Exception) as raised:
        backend.get("config")
    assert getattr(raised.value, "code", None) == "backend_unavailable"


def test_vault_life_on_s3(s3_vault: S3Vault, tmp_path: Path) -> None:
    ctx = Context(s3_vault.url("site-a/vault"), f"sqlite:///{tmp_path / 'catalog.db'}")
    vault = init_vault(ctx)
    assert vault.backend.describe() == f"s3://{s3_vault.bucket}/site-a/vault"
    with pytest.raises(VaultExists):  # the prefix already holds a config
        init_vault(ctx)

    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 12 * MiB, seed=3, jobs=1)
    first = run_backup(ctx, "vm1", [DiskSpec("d0", str(image))])
    testdisk.mutate_disk(image, 5, jobs=1)
    second = run_backup(ctx, "vm1", [DiskSpec("d0", str(image))])
    assert first["type"] == "full"
    assert second["type"] == "incremental" and second["parent"] == first["id"]

    target = tmp_path / "restored.img"
    run_restore(ctx, second["id"], str(target))
    assert same_content(image, target)

    report = run_check(ctx, read_data=True)
    assert report.ok, report.problems
    forget_point(ctx, first["id"])
    gc = run_gc(ctx, grace=0)
    assert not gc.damaged
    assert run_check(ctx, read_data=True).ok
    target.unlink()
    run_restore(ctx, second["id"], str(target))
    assert same_content(image, target)


def test_init_needs_an_existing_bucket(s3_vault: S3Vault, tmp_path: Path) -> None:
    ctx = Context("s3://no-such-bucket-here/v", f"sqlite:///{tmp_path / 'catalog.db'}")
    with pytest.raises(BucketMissing, match="does not exist"):
        init_vault(ctx)


def test_cli_with_an_s3_vault(s3_vault: S3Vault, tmp_path: Path) -> None:
    env = {
        **s3_vault.server.env(),
        "VMVAULT_CATALOG": f"sqlite:///{tmp_path / 'cat.db'}",
        "VMVAULT_PASSPHRASE": PASSPHRASE,
    }
    url = s3_vault.url("cli")
    image = tmp_path / "d.img"
    testdisk.create_disk(image, 8 * MiB, seed=4, jobs=1)
    init = run_cli("init", "--vault", url, "--json", env=env)
    assert init.returncode == 0, init.stderr
    backup = run_cli("backup", str(image), "--vm", "web", "--vault", url, "--json", env=env)
    assert backup.returncode == 0, backup.stderr
    point = json.loads(backup.stdout)
    out = tmp_path / "out.img"
    restored = run_cli("restore", point["id"][:10], str(out), "--vault", url, "--json", env=env)
    assert restored.returncode == 0, restored.stderr
    assert same_content(image, out)
    missing = run_cli("init", "--vault", "s3://no-such-bucket-here/x", env=env)
    assert missing.returncode != 0
    assert "no-such-bucket-here" in missing.stderr and len(missing.stderr.splitlines()) == 1
    no_bucket = run_cli("list", "--vault", "s3://", env=env)  # its message has brackets
    assert no_bucket.returncode == 2, no_bucket.stderr
    assert (
        no_bucket.stderr.strip()
        == "error: no bucket in vault URL 's3://': use s3://BUCKET[/PREFIX]"
    )
