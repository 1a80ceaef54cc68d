"""A server to test against: a vault with two VMs (one backed up), tokens of each role."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from conftest import PASSPHRASE
from vmvault.app.backup import run_vm_backup
from vmvault.app.context import Context
from vmvault.app.vaults import init_vault
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
    root: Path, *, backup: bool = True, extra_inventory: str = "", catalog_url: str | None = None
) -> Site:
    root.mkdir(parents=True, exist_ok=True)
    passfile = root / "passphrase"
    passfile.write_text(PASSPHRASE)
    passfile.chmod(0o600)
    inventory = root / "inventory.toml"
    inventory.write_text(inventory_text(root, extra_inventory))
    catalog_url = catalog_url or f"sqlite:///{root / 'catalog.db'}"
    ctx = Context(str(root / "vault"), catalog_url, str(passfile))
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
