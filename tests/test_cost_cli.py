"""`vmvault cost` from a real vault: sizes from the backups, billing from protection."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import PASSPHRASE, run_cli
from vmvault import protection, service


def test_cost_report_from_the_vault(tmp_path: Path, ctx: service.Context) -> None:
    for name in ("web", "db"):
        disk = tmp_path / f"{name}.img"
        with open(disk, "wb") as f:
            f.truncate(16 << 20)
            f.write(os.urandom(3 << 20))
        service.run_backup(ctx, name, [service.DiskSpec("os", str(disk), role="os")])
    protection.stop(ctx.open_vault(load_index=False), "db", delete_data=True)
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }
    result = run_cli("cost", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["vm"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["web"]["billed"] and rows["web"]["total"] == "5.00"  # under 50 GB: one small
    assert abs(rows["web"]["protected_instance_bytes"] - (3 << 20)) < (64 << 10)
    assert rows["web"]["storage_bytes"] > 3_000_000  # random data: stored as is
    assert not rows["db"]["billed"] and float(rows["db"]["total"]) == 0  # soft-deleted
    csv = run_cli("cost", "--csv", env=env)
    assert csv.stdout.splitlines()[0].startswith("vm,") and len(csv.stdout.splitlines()) == 3
