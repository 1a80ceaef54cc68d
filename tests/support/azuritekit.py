"""A real Azure Blob service for the tests: Azurite's blob server (``azurite-blob``, from
npm: ``make azurite``) on loopback and a free port, in a temporary directory, stopped at the
end.

``azurite_server`` is session-scoped; ``azure_vault`` gives each test its own container and
sets ``AZURE_STORAGE_CONNECTION_STRING``, as a user of an Azure vault would (with
Azurite's well-known development account, which every Azurite has).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Azurite's development account: public, documented, the same in every Azurite.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT = 60.0
AZURE_VARIABLES = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_BLOB_ENDPOINT",
    "AZURE_STORAGE_ACCOUNT",
)


def azurite_binary() -> str:
    found = shutil.which("azurite-blob")
    if found is None:
        pytest.fail("no azurite-blob: run `make azurite` (npm install -g azurite)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AzuriteServer:
    endpoint: str  # the blob endpoint, account included (Azurite's path-style URLs)
    log: Path

    def connection_string(self, key: str = ACCOUNT_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={self.endpoint};"
        )

    def env(self) -> dict[str, str]:
        """What a user of an Azure vault on this server sets: Azure's own variable."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string()}

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        # No SDK retries: while Azurite starts, its backoff would wait far longer than it.
        return BlobServiceClient.from_connection_string(self.connection_string(), retry_total=0)


def _start(base: Path) -> tuple[subprocess.Popen[bytes], AzuriteServer]:
    port = free_port()
    argv = [
        azurite_binary(),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(base / "data"),
        "--silent",  # no access log
        "--skipApiVersionCheck",  # the SDK may be newer than this Azurite's API version
        "--disableTelemetry",  # it would try to reach Microsoft: the tests stay on loopback
    ]
    (base / "data").mkdir()
    log = base / "azurite.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=base)
    return proc, AzuriteServer(f"http://127.0.0.1:{port}/{ACCOUNT}", log)


def _wait_ready(proc: subprocess.Popen[bytes], server: AzuriteServer) -> None:
    """Until a container can be made and written (Node starts Azurite in a few seconds)."""
    service = server.service()
    probe = f"ready-{secrets.token_hex(4)}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"azurite-blob exited {proc.returncode}: {server.log.read_text()[-2000:]}")
        try:
            container = service.create_container(probe)
            container.upload_blob("probe", b"x")
            service.delete_container(probe)
            return
        except Exception:
            if time.monotonic() > deadline:
                pytest.fail(f"Azurite not ready in {START_TIMEOUT:.0f} s: {server.log}")
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[AzuriteServer]:
    base = Path(tempfile.mkdtemp(prefix="vmvault-azurite-"))
    proc, server = _start(base)
    try:
        _wait_ready(proc, server)
        yield server
    finally:
        _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class AzureVault:
    server: AzuriteServer
    container: str
    client: Any  # the SDK's ContainerClient, for looking behind the backend's back

    def url(self, prefix: str = "vault") -> str:
        base = f"azure://{ACCOUNT}/{self.container}"
        return f"{base}/{prefix}" if prefix else base


@pytest.fixture
def azure_vault(azurite_server: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> AzureVault:
    """A new container on the session's Azurite, and AZURE_STORAGE_CONNECTION_STRING set."""
    for name in AZURE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in azurite_server.env().items():
        monkeypatch.setenv(name, value)
    container = f"vmvault-{secrets.token_hex(6)}"
    client = azurite_server.service().create_container(container)
    return AzureVault(azurite_server, container, client)
