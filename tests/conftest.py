"""Shared fixtures: a vault in a temporary directory, a catalog beside it, test images."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vmvault import testdisk
from vmvault.app.context import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, Context
from vmvault.app.vaults import init_vault

PASSPHRASE = "test passphrase"


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    monkeypatch.delenv(PASSPHRASE_FILE_ENV, raising=False)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    context = Context(str(tmp_path / "vault"), f"sqlite:///{tmp_path / 'catalog.db'}")
    init_vault(context)
    return context


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "disk.img", size: int = 24 * testdisk.MiB, seed: int = 1) -> Path:
        path = tmp_path / name
        testdisk.create_disk(path, size, seed=seed, jobs=1)
        return path

    return make


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
