"""The Azure Blob backend against a real Azure Blob service (Azurite,
tests/support/azuritekit.py): the backend contract, a vault's life through the use cases,
and the CLI with ``--vault azure://``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path

import pytest

from support.azuritekit import ACCOUNT, ACCOUNT_KEY, AzureVault, free_port
from support.cli import PASSPHRASE, run_cli, same_content
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point
from vmvault.app.restore import run_restore
from vmvault.app.vaults import init_vault, run_check, run_gc
from vmvault.backends.azure import AzureBackend
from vmvault.backends.base import (
    BucketMissing,
    ObjectExists,
    TransientBackendError,
    innermost,
    put_new,
)
from vmvault.backends.local import BackendDenied, BackendReadOnly
from vmvault.backends.retry import RetryingBackend
from vmvault.backends.url import AZURE_READ_BLOCK, AZURE_SINGLE_PUT, open_backend
from vmvault.errors import CorruptObject, ObjectMissing, UsageError
from vmvault.vault.vault import VaultExists

pytestmark = pytest.mark.azure
MiB = testdisk.MiB
# A key that decodes (so requests are signed) but is not the account's.
WRONG_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="


def _backend(vault: AzureVault, prefix: str = "v1") -> AzureBackend:
    """The backend as ``open_backend`` makes it (the connection string of the fixture),
    without the retry, counting and cache layers."""
    backend = innermost(open_backend(vault.url(prefix)))
    assert isinstance(backend, AzureBackend)
    return backend


def test_put_get_ranges_size(azure_vault: AzureVault) -> None:
    backend = _backend(azure_vault)
    backend.put("packs/ab/ab12", b"0123456789")
    backend.put("parts", [b"abc", b"", b"def"])  # a payload in parts is stored joined
    backend.put("view", memoryview(b"xyz"))  # the SDK would iterate a memoryview as ints
    backend.put("empty", b"")
    assert backend.get("packs/ab/ab12") == b"0123456789"
    assert backend.get("packs/ab/ab12", 3, 4) == b"3456"
    assert backend.get("packs/ab/ab12", 7) == b"789"
    assert backend.get("packs/ab/ab12", 10) == b""
    assert backend.get("packs/ab/ab12", 2, 0) == b""
    assert backend.get("parts") == b"abcdef"
    assert backend.get("view") == b"xyz"
    assert backend.get("empty") == b""
    assert backend.size("packs/ab/ab12") == 10
    assert backend.size("empty") == 0
    assert backend.modified("packs/ab/ab12") > 1.7e9
    for offset, length in ((8, 5), (10, 2), (20, 1)):
        with pytest.raises(CorruptObject):  # a range past the end: a truncated object
            backend.get("packs/ab/ab12", offset, length)
    backend.put("packs/ab/ab12", b"new")  # a whole replacement
    assert backend.get("packs/ab/ab12") == b"new"
    # What is stored is a plain block blob named prefix + key, nothing of vmvault's around it.
    assert azure_vault.client.download_blob("v1/packs/ab/ab12").readall() == b"new"


def test_a_large_object_is_one_put_blob(azure_vault: AzureVault) -> None:
    # Above the SDK's default single-put size (64 MiB), below vmvault's: still one Put Blob
    # (atomic, no staged blocks), and read back whole or by range.
    assert 65 * MiB < AZURE_SINGLE_PUT
    backend = _backend(azure_vault)
    data = os.urandom(65 * MiB)
    backend.put("packs/big", data)
    blocks, _ = azure_vault.client.get_blob_client("v1/packs/big").get_block_list("committed")
    assert blocks == []  # a blob made by Put Blob has no committed block list
    assert backend.get("packs/big") == data
    assert backend.get("packs/big", 64 * MiB, 1000) == data[64 * MiB : 64 * MiB + 1000]
    # Read in steps of AZURE_READ_BLOCK, not the SDK's 4 KiB (a Python step per 4 KiB cost
    # a restore from Azure most of its CPU).
    config = backend.client._config.transport.connection_config
    assert config.data_block_size == AZURE_READ_BLOCK >= 64 * 1024


def test_missing_keys_and_delete(azure_vault: AzureVault) -> None:
    backend = _backend(azure_vault)
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


def test_list_under_prefix_keeps_vaults_apart(azure_vault: AzureVault) -> None:
    one, two = _backend(azure_vault, "one"), _backend(azure_vault, "team/two")
    for key in ("config", "packs/00/a", "packs/01/b", "points/p1"):
        one.put(key, b"1")
    two.put("config", b"2")
    # A Data Lake (hierarchical namespace) account lists its directories as empty blobs
    # marked hdi_isfolder: not vault objects.
    azure_vault.client.upload_blob("one/packs", b"", metadata={"hdi_isfolder": "true"})
    assert sorted(one.list()) == ["config", "packs/00/a", "packs/01/b", "points/p1"]
    assert sorted(one.list("packs/")) == ["packs/00/a", "packs/01/b"]
    assert list(one.list("nothing/")) == []
    assert list(two.list()) == ["config"]
    assert two.get("config") == b"2"
    assert two.describe() == f"azure://{ACCOUNT}/{azure_vault.container}/team/two"


def test_many_keys_are_listed_across_pages(azure_vault: AzureVault) -> None:
    backend = _backend(azure_vault)
    backend.page_size = 100  # the service's pages hold 5000: smaller ones, same code path
    keys = [f"packs/{i:04d}" for i in range(250)]
    for key in keys:
        backend.put(key, b"")
    assert sorted(backend.list("packs/")) == keys


def test_creation_only_put_refuses_a_taken_key(azure_vault: AzureVault) -> None:
    backend = _backend(azure_vault)
    backend.create("points/p1", b"first")
    with pytest.raises(ObjectExists):  # If-None-Match: *, refused by the service
        backend.create("points/p1", b"second")
    assert backend.get("points/p1") == b"first"
    # Through the retry layer and put_new, as the vault writes packs and points: the
    # refusal leaves the other writer's object in place.
    retrying = RetryingBackend(backend)
    put_new(retrying, "points/p2", b"mine")
    with pytest.raises(ObjectExists):
        put_new(retrying, "points/p2", b"theirs")
    assert backend.get("points/p2") == b"mine"


def _race(backend: AzureBackend, key: str, writers: int) -> tuple[list[int], list[int]]:
    """``writers`` threads creating ``key`` at once: (who won, who was refused)."""
    start = threading.Barrier(writers)
    won: list[int] = []
    refused: list[int] = []
    failed: list[BaseException] = []

    def write(n: int) -> None:
        start.wait()
        try:
            backend.create(key, f"writer {n}".encode())
            won.append(n)
        except ObjectExists:
            refused.append(n)
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failed, failed
    return won, refused


def test_concurrent_creators_of_one_key_one_wins(
    azure_vault: AzureVault, caplog: pytest.LogCaptureFixture
) -> None:
    # Writers racing for one creation key (a lock, a point): exactly one wins each round,
    # every other is told the key is taken, and the winner's bytes are what is stored.
    backend = _backend(azure_vault)
    writers = 16
    caplog.set_level(logging.DEBUG, logger="urllib3.connectionpool")
    for round_ in range(5):
        key = f"locks/backup-{round_:02d}"
        won, refused = _race(backend, key, writers)
        assert len(won) == 1 and len(refused) == writers - 1
        assert backend.get(key) == f"writer {won[0]}".encode()
    # The threads shared one pool and kept its connections: at most one per thread was
    # ever opened (requests' default pool of 10 would drop and reopen some every round).
    opened = [r for r in caplog.records if "Starting new HTTP connection" in r.getMessage()]
    assert 1 <= len(opened) <= writers


class _AnswerLost:
    """The real Azure backend, but the first creation's answer is lost after the blob was
    stored (a connection dropped on the way back): the retry then meets its own object."""

    def __init__(self, inner: AzureBackend) -> None:
        self.inner, self.lost = inner, False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def create(self, key: str, data: bytes) -> None:
        self.inner.create(key, data)
        if not self.lost:
            self.lost = True
            raise TransientBackendError("connection reset after the put")


def test_a_retried_creation_accepts_its_own_object(azure_vault: AzureVault) -> None:
    backend = _backend(azure_vault)
    retrying = RetryingBackend(_AnswerLost(backend), base_delay=0.01)  # type: ignore[arg-type]
    put_new(retrying, "packs/ab/abcd", b"pack")
    assert backend.get("packs/ab/abcd") == b"pack"
    with pytest.raises(ObjectExists):  # without a failed attempt before: refused
        put_new(retrying, "packs/ab/abcd", b"other")


def test_invalid_keys_and_urls_are_refused(azure_vault: AzureVault) -> None:
    backend = _backend(azure_vault)
    for key in ("../x", "/abs", "a//b", ""):
        with pytest.raises(UsageError):
            backend.put(key, b"")
    for url in (
        "azure://",
        f"azure://{ACCOUNT}",
        f"azure://{ACCOUNT}/",
        f"azure://{ACCOUNT}/c/../up",
        f"azure://{ACCOUNT}/Upper-Case",
        "azure://x/container",
        "gs://bucket/x",
    ):
        with pytest.raises(UsageError):
            open_backend(url)


def test_container_missing(azure_vault: AzureVault) -> None:
    other = azure_vault.server.service().get_container_client("no-such-container")
    backend = AzureBackend(ACCOUNT, "no-such-container", "v", other)
    for call in (
        backend.check_bucket,
        lambda: backend.put("x", b""),
        lambda: backend.create("x", b""),
        lambda: backend.get("x"),
        lambda: backend.exists("x"),  # not "no such object": the whole vault is not there
        lambda: backend.delete("x"),  # not "already gone"
        lambda: list(backend.list()),
    ):
        with pytest.raises(BucketMissing, match="container 'no-such-container' does not exist"):
            call()


def test_credentials_from_the_environment(
    azure_vault: AzureVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = azure_vault.url()
    _backend(azure_vault, "vault").put("config", b"c")
    endpoint = azure_vault.server.endpoint
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    with pytest.raises(UsageError) as raised:  # nothing set: one line naming the variables
        open_backend(url)
    message = str(raised.value)
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        assert name in message
    # A shared key with an endpoint (here Azurite's; by default ACCOUNT.blob.core.windows.net)
    monkeypatch.setenv("AZURE_STORAGE_BLOB_ENDPOINT", endpoint)
    monkeypatch.setenv("AZURE_STORAGE_KEY", ACCOUNT_KEY)
    assert open_backend(url).get("config") == b"c"
    # A SAS token that may read and list only: reads work, writes are vault_read_only.
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT,
        azure_vault.container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?" + sas)  # as the portal copies it
    read_only = open_backend(url)
    assert read_only.get("config") == b"c" and list(read_only.list()) == ["config"]
    for write in (lambda: read_only.put("x", b"1"), lambda: read_only.delete("config")):
        with pytest.raises(BackendReadOnly) as denied:
            write()
        assert sas.split("sig=")[1][:10] not in str(denied.value)


def test_a_wrong_key_and_a_wrong_account(
    azure_vault: AzureVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = azure_vault.server
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string(WRONG_KEY))
    backend = open_backend(azure_vault.url())
    for call in (lambda: backend.get("config"), lambda: backend.put("config", b"")):
        with pytest.raises(BackendDenied) as raised:  # a 403, never retried
            call()
        assert WRONG_KEY not in str(raised.value) and WRONG_KEY[:12] not in str(raised.value)
    assert backend.describe() == f"azure://{ACCOUNT}/{azure_vault.container}/vault"
    # A key that is not even base64: no request can be signed.
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string("not-a-key!"))
    with pytest.raises(BackendDenied, match="cannot be signed"):
        open_backend(azure_vault.url()).get("config")
    # The connection string is for another account than the URL's: refused before any request.
    with pytest.raises(UsageError, match="is for account 'devstoreaccount1', not 'another1'"):
        open_backend(f"azure://another1/{azure_vault.container}/vault")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "no equals sign here")
    with pytest.raises(UsageError, match="malformed"):
        open_backend(azure_vault.url())


def test_unreachable_store_is_transient_then_unavailable(
    azure_vault: AzureVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = azure_vault.server.connection_string().replace(
        azure_vault.server.endpoint, f"http://127.0.0.1:{free_port()}/{ACCOUNT}"
    )
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", closed)
    inner = innermost(open_backend(azure_vault.url()))
    with pytest.raises(TransientBackendError):  # the SDK's own retries are off: at once
        inner.get("config")
    backend = RetryingBackend(inner, attempts=2, base_delay=0.01)
    with pytest.raises(Exception) as raised:
        backend.get("config")
    assert getattr(raised.value, "code", None) == "backend_unavailable"


def test_vault_life_on_azure(azure_vault: AzureVault, tmp_path: Path) -> None:
    ctx = Context(azure_vault.url("site-a/vault"), f"sqlite:///{tmp_path / 'catalog.db'}")
    vault = init_vault(ctx)
    assert vault.backend.describe() == f"azure://{ACCOUNT}/{azure_vault.container}/site-a/vault"
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


def test_init_needs_an_existing_container(azure_vault: AzureVault, tmp_path: Path) -> None:
    ctx = Context(f"azure://{ACCOUNT}/no-such-container/v", f"sqlite:///{tmp_path / 'catalog.db'}")
    with pytest.raises(BucketMissing, match="does not exist: create it first"):
        init_vault(ctx)


def test_cli_with_an_azure_vault(azure_vault: AzureVault, tmp_path: Path) -> None:
    env = {
        **azure_vault.server.env(),
        "VMVAULT_CATALOG": f"sqlite:///{tmp_path / 'cat.db'}",
        "VMVAULT_PASSPHRASE": PASSPHRASE,
    }
    url = f"azure://{ACCOUNT}/{azure_vault.container}/vault"
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
    listed = run_cli("list", "--vault", url, env=env)
    assert listed.returncode == 0, listed.stderr
    for run in (init, backup, restored, listed):  # the account key is in no output
        assert ACCOUNT_KEY not in run.stdout + run.stderr
        assert ACCOUNT_KEY[:16] not in run.stdout + run.stderr

    missing = run_cli("init", "--vault", f"azure://{ACCOUNT}/no-such-container/x", env=env)
    assert missing.returncode != 0
    assert missing.stderr.strip() == (
        "error: container 'no-such-container' does not exist: create it first"
        f" (azure://{ACCOUNT}/no-such-container/x)"
    )
    no_credentials = run_cli(
        "list", "--vault", url, env={**env, "AZURE_STORAGE_CONNECTION_STRING": ""}
    )
    assert no_credentials.returncode == 2
    assert len(no_credentials.stderr.splitlines()) == 1, no_credentials.stderr
    assert no_credentials.stderr.startswith("error: no Azure credentials for azure://")
    wrong_key = run_cli(
        "list",
        "--vault",
        url,
        env={
            **env,
            "AZURE_STORAGE_CONNECTION_STRING": azure_vault.server.connection_string(WRONG_KEY),
        },
    )
    assert wrong_key.returncode != 0 and len(wrong_key.stderr.splitlines()) == 1, wrong_key.stderr
    assert WRONG_KEY[:12] not in wrong_key.stderr and "Traceback" not in wrong_key.stderr
    bad_url = run_cli("list", "--vault", f"azure://{ACCOUNT}", env=env)  # it has brackets
    assert bad_url.returncode == 2, bad_url.stderr
    assert bad_url.stderr.strip() == (
        f"error: no account or container in vault URL 'azure://{ACCOUNT}':"
        " use azure://ACCOUNT/CONTAINER[/PREFIX]"
    )
