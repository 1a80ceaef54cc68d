"""`vmvault serve` for real (TLS, a subprocess on loopback), `vmvault token`, and the CLI as
a client of the server (`--server URL --token T`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.cli import run_cli
from support.serverkit import Site, make_site, serving


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local(site: Site) -> list[str]:
    c = site.config
    return [
        "--vault",
        c.vault,
        "--catalog",
        c.catalog_url or "",
        "--passphrase-file",
        c.passphrase_file or "",
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, str, Path]]:
    site = make_site(tmp_path_factory.mktemp("served"))
    cert, key = _self_signed(site.root)
    port = _free_port()
    env = {**os.environ, "VMVAULT_PASSPHRASE": ""}
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from vmvault.cli.main import run; run()",
            "serve",
            "--port",
            str(port),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--inventory",
            site.config.inventory or "",
            "--restore-root",
            site.config.restore_root or "",
            "--tick",
            "3600",
            *_local(site),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if (
                httpx.get(
                    f"{url}/api/v1/health",
                    verify=ssl.create_default_context(cafile=cert),
                    timeout=2,
                ).status_code
                == 200
            ):
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"server did not start: {server.communicate()[0]}")
        time.sleep(0.2)
    try:
        yield site, url, cert
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def _remote(
    served: tuple[Site, str, Path], token: str, *args: str
) -> subprocess.CompletedProcess[str]:
    _, url, cert = served
    return run_cli("--server", url, "--token", token, "--ca-cert", str(cert), *args)


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_token_cli_creates_lists_and_revokes(served: tuple[Site, str, Path]) -> None:
    site, url, cert = served
    made = _json(
        run_cli("token", "create", "backup-bot", "--role", "operator", "--json", *_local(site))
    )
    assert made["token"].startswith("vmv_") and made["role"] == "operator"
    listed = run_cli("token", "list", "--json", *_local(site))
    assert "backup-bot" in listed.stdout and made["token"] not in listed.stdout
    answer = httpx.get(
        f"{url}/api/v1/vms",
        headers={"Authorization": f"Bearer {made['token']}"},
        verify=ssl.create_default_context(cafile=cert),
    )
    assert answer.status_code == 200
    _json(run_cli("token", "revoke", str(made["id"]), "--json", *_local(site)))
    answer = httpx.get(
        f"{url}/api/v1/vms",
        headers={"Authorization": f"Bearer {made['token']}"},
        verify=ssl.create_default_context(cafile=cert),
    )
    assert answer.status_code == 401
    bad_role = run_cli("token", "create", "x", "--role", "root", *_local(site))
    assert bad_role.returncode == 2 and "unknown role 'root'" in bad_role.stderr


def test_tls_is_verified_and_cookies_are_secure(served: tuple[Site, str, Path]) -> None:
    site, url, cert = served
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/api/v1/health", timeout=5)  # not signed by a trusted CA
    login = httpx.post(
        f"{url}/login",
        data={"token": site.tokens["reader"]},
        verify=ssl.create_default_context(cafile=cert),
    )
    assert login.status_code == 303
    cookie = login.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    untrusted = run_cli("--server", url, "--token", site.tokens["reader"], "vm", "list")
    assert untrusted.returncode == 1 and "cannot reach" in untrusted.stderr


def test_cli_reads_and_runs_through_the_server(served: tuple[Site, str, Path]) -> None:
    site, _, _ = served
    operator = site.tokens["operator"]
    vms = _json(_remote(served, operator, "vm", "list", "--json"))["vms"]
    assert {v["name"] for v in vms} == {"web01", "db01"}
    assert _json(_remote(served, operator, "vm", "show", "web01", "--json"))["points"] >= 1
    points = _json(_remote(served, operator, "list", "--vm", "web01", "--json"))["points"]
    assert points and points[-1]["vm"] == "web01"
    job = _json(_remote(served, operator, "vm", "backup", "db01", "--json"))
    assert job["state"] == "succeeded" and job["point_id"]
    shown = _json(_remote(served, operator, "jobs", "show", str(job["id"]), "--json"))
    assert shown["point_id"] == job["point_id"]
    listed = _json(_remote(served, operator, "jobs", "list", "--json"))["jobs"]
    assert job["id"] in [j["id"] for j in listed]
    verified = _json(_remote(served, operator, "verify", "latest", "--vm", "db01", "--json"))
    assert verified["ok"] and verified["point"] == job["point_id"]
    assert {d["vm"] for d in verified["disks"]} == {"db01"}
    restored = _json(
        _remote(served, operator, "vm", "restore", "web01", "--as", "web01-cli", "--json")
    )
    assert restored["state"] == "succeeded"
    assert (site.root / "restores" / "web01-cli" / "web01-cli-os.img").exists()
    as_text = _remote(served, operator, "vm", "restore", "web01", "--as", "web01-human")
    assert as_text.returncode == 0, as_text.stderr
    folder = (site.root / "restores" / "web01-human").resolve()
    # the point it restored, where each disk and the new VM's entry went (the job's details)
    assert f"restored point {points[-1]['id']} of web01\n" in as_text.stdout, as_text.stdout
    for line in (
        f"restored os -> {folder / 'web01-human-os.img'}",
        f"restored data -> {folder / 'web01-human-data.img'}",
        f"new VM web01-human: inventory entry in {folder / 'web01-human.toml'}",
    ):
        assert line in as_text.stdout.splitlines(), as_text.stdout
    assert _json(_remote(served, operator, "cost", "--json"))["rows"]
    assert "jobs" in _json(_remote(served, operator, "plan", "--json"))
    human = _remote(served, operator, "list")
    assert human.returncode == 0 and "web01" in human.stdout


def test_remote_errors_are_one_line(served: tuple[Site, str, Path]) -> None:
    site, _, _ = served
    refused = _remote(served, site.tokens["reader"], "vm", "backup", "db01")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "needs the operator role" in refused.stderr
    wrong = _remote(served, "vmv_wrong", "vm", "list")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert wrong.stderr.startswith("error: server: the token is not valid")
    unknown = _remote(served, site.tokens["reader"], "jobs", "show", "424242")
    assert unknown.returncode == 2 and "no job 424242" in unknown.stderr
    local_only = _remote(served, site.tokens["admin"], "check")
    assert local_only.returncode == 2 and "local vault only" in local_only.stderr


def test_serve_refuses_half_a_tls_setup(tmp_path: Path) -> None:
    done = run_cli("serve", "--tls-cert", str(tmp_path / "c.pem"), "--vault", str(tmp_path))
    assert done.returncode == 2 and "both --tls-cert and --tls-key" in done.stderr


def test_serve_refuses_a_restore_root_that_is_not_a_directory(tmp_path: Path) -> None:
    """Refused at start, not as each API restore's job failing later; a symlink to a
    directory is one."""
    site = make_site(tmp_path / "site", backup=False)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    serve = [sys.executable, "-c", "from vmvault.cli.main import run; run()", "serve"]
    for root, what in [(tmp_path / "nowhere", "does not exist"), (a_file, "is not a directory")]:
        refused = subprocess.run(  # bounded: a server that starts would never return
            [*serve, "--port", str(_free_port()), "--restore-root", str(root), *_local(site)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith(f"error: --restore-root {root} {what}: create it")
        assert refused.stderr.count("\n") == 1
    link = tmp_path / "restored"
    link.symlink_to(site.root / "restores")
    with serving(site, tmp_path / "serve.log", "--restore-root", str(link)) as served:
        assert served.get("/api/v1/jobs", "reader").status_code == 200


def test_serve_says_what_it_watches_logs_in_one_shape_and_stops_cleanly(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", backup=False)
    log = tmp_path / "serve.log"
    with serving(site, log, "--tick", "3600") as served:
        assert served.get("/api/v1/jobs", "reader").status_code == 200
        served.process.send_signal(signal.SIGTERM)  # a service manager's stop
        assert served.process.wait(timeout=30) == 0  # not a death by SIGTERM (143)
    text = log.read_text()
    # the scheduler's start-up summary: the vault, each VM and its next run, maintenance
    assert "INFO vmvault.server: VM web01: policy nightly, next run " in text
    assert "daily maintenance at 12:00 UTC" in text
    assert "INFO vmvault.server: server stopped" in text and "Traceback" not in text
    # uvicorn's own lines in the same shape, not its "INFO:     " prefix
    assert "INFO uvicorn: Uvicorn running on" in text and "INFO:     " not in text
    assert "uvicorn.error" not in text  # its start and stop are not errors


def test_security_alert_from_the_cli_is_listed(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", backup=False)
    stopped = run_cli("protection", "stop", "db01", "--delete-data", "--json", *_local(site))
    assert stopped.returncode == 0, stopped.stderr
    alerts = _json(run_cli("alerts", "list", "--json", *_local(site)))["alerts"]
    assert [a["kind"] for a in alerts] == ["backup_data_deleted"] and alerts[0]["vm"] == "db01"
    assert alerts[0]["deliveries"] == []  # a server or scheduler delivers it
    human = run_cli("alerts", "list", *_local(site), env={"COLUMNS": "200"})
    assert human.returncode == 0 and "backup_data_deleted" in human.stdout


def test_following_a_job_passes_on_its_progress(served: tuple[Site, str, Path]) -> None:
    from vmvault.cli.remote import Remote
    from vmvault.engine.progress import ProgressEvent

    site, url, cert = served
    remote = Remote(url, site.tokens["operator"], str(cert))
    job = remote.post("/api/v1/vms/web01/backup", {"full": True})
    events: list[ProgressEvent] = []
    done = remote.wait(job["id"], events.append, poll=0.05)
    assert done["state"] == "succeeded"
    last = {e.disk: e for e in events}
    assert set(last) == {"os", "data"}  # the temporary disk is never backed up
    assert all(e.operation == "backup" and e.done == e.total > 0 for e in last.values()), last
