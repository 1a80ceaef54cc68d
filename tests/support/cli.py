"""Running the real ``vmvault`` command, and comparing what it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmvault.app.context import Context

PASSPHRASE = "test passphrase"


def cli_env(ctx: Context, inventory: Path | None = None) -> dict[str, str]:
    """The environment that points `vmvault` at ``ctx``'s vault and catalog (and inventory)."""
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }
    return env | ({"VMVAULT_INVENTORY": str(inventory)} if inventory else {})


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real `vmvault` entry point in a subprocess (exit codes, stderr, JSON)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from vmvault.cli.main import run; run()", *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=check,
    )


def same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True
