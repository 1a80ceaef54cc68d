"""A server to test against: a vault with two VMs (one backed up), tokens of each role; and
`vmvault serve` of such a site, on a free port of the loopback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.cli import PASSPHRASE
from vmvault.app.context import Context
from vmvault.app.vaults import init_vault
from vmvault.app.vm_backup import run_vm_backup
from vmvault.inventory import load_inventory
from vmvault.server.accounts import Accounts
from vmvault.server.state import ServerConfig

MiB = 1 << 20


@dataclass
class Site:
    root: Path
    config: ServerConfig
    tokens: dict[str, str]  # role -> secret
    ctx: Context

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def _disk(path: Path, size: int, seed: int) -> Path:
    rng = seed.to_bytes(2, "big") * (MiB // 2)
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(MiB)
        f.write(os.urandom(MiB // 2) + rng[: MiB // 2])
    return path


def inventory_text(root: Path, extra: str = "") -> str:
    disks = root / "disks"
    disks.mkdir(exist_ok=True)
    web_os = _disk(disks / "web01-os.img", 8 * MiB, 1)
    web_data = _disk(disks / "web01-data.img", 6 * MiB, 2)
    web_temp = _disk(disks / "web01-temp.img", 4 * MiB, 3)
    db_os = _disk(disks / "db01-os.img", 6 * MiB, 4)
    return f"""
[pools.fast]
egress_mb_per_s = 200

[policies.nightly]
schedule = {{ kind = "daily", time = "22:00" }}
retention = {{ daily_days = 7 }}

[[vms]]
name = "web01"
state = "stopped"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "{web_os}"
  role = "os"
  pool = "fast"
  [[vms.disks]]
  name = "data"
  path = "{web_data}"
  pool = "fast"
  [[vms.disks]]
  name = "temp"
  path = "{web_temp}"
  role = "temporary"

[[vms]]
name = "db01"
state = "stopped"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "{db_os}"
  role = "os"
  pool = "fast"
{extra}
"""


def make_site(
    root: Path,
    *,
    backup: bool = True,
    extra_inventory: str = "",
    catalog_url: str | None = None,
    vault: str | None = None,
) -> Site:
    root.mkdir(parents=True, exist_ok=True)
    passfile = root / "passphrase"
    passfile.write_text(PASSPHRASE)
    passfile.chmod(0o600)
    inventory = root / "inventory.toml"
    inventory.write_text(inventory_text(root, extra_inventory))
    catalog_url = catalog_url or f"sqlite:///{root / 'catalog.db'}"
    ctx = Context(vault or str(root / "vault"), catalog_url, str(passfile))
    init_vault(ctx)
    if backup:
        run_vm_backup(ctx, load_inventory(inventory), "web01")
    accounts = Accounts(ctx.catalog())
    tokens = {
        role: accounts.create_token(f"{role}-token", role, created_by="test")[0]
        for role in ("reader", "operator", "admin")
    }
    (root / "restores").mkdir(exist_ok=True)
    config = ServerConfig(
        vault=ctx.vault_path,
        catalog_url=ctx.catalog_url,
        passphrase_file=str(passfile),
        inventory=str(inventory),
        restore_root=str(root / "restores"),
        scheduler=False,
        worker=True,
    )
    return Site(root, config, tokens, ctx)


# -- a real `vmvault serve` ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    """A running `vmvault serve` of ``site``, answering at ``url``; its output goes to ``log``."""

    site: Site
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def api(self, method: str, path: str, role: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, self.url + path, headers=self.site.auth(role), timeout=30, **kwargs
        )

    def get(self, path: str, role: str) -> httpx.Response:
        return self.api("GET", path, role)

    def peak_rss(self) -> int:
        """The server process's peak resident size so far (VmHWM), in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def _serve(site: Site, log: Path, options: tuple[str, ...]) -> Served:
    """`vmvault serve` on a free port, once /api/v1/health answers."""
    config = site.config
    vmvault = Path(sys.executable).with_name("vmvault")  # the entry point of this environment
    # The site's files say everything: no passphrase or vault from the caller's environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMVAULT_")}
    for _ in range(3):  # another process may take the port between probe and bind
        port = free_port()
        command = [
            str(vmvault),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--vault",
            config.vault,
            "--catalog",
            str(config.catalog_url),
            "--inventory",
            str(config.inventory),
            "--passphrase-file",
            str(config.passphrase_file),
            *options,
        ]
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                    return Served(site, process, url, port, log)
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        process.kill()
        process.wait()
    raise AssertionError(f"vmvault serve did not start:\n{log.read_text()[-3000:]}")


@contextmanager
def serving(site: Site, log: Path, *options: str) -> Iterator[Served]:
    """`vmvault serve` of ``site`` with the command-line ``options`` added, from when it
    answers until the block ends; then it is stopped (killed if it does not stop in 20 s)."""
    served = _serve(site, log, options)
    try:
        yield served
    finally:
        served.process.terminate()
        try:
            served.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()
