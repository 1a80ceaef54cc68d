"""A vault on a read-only mount (a copy, a snapshot) can be listed, verified, checked and
restored from; what would write to it fails with one clear line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import PASSPHRASE, run_cli, same_content
from vmvault import service, testdisk


@pytest.fixture
def read_only_vault(
    tmp_path: Path, ctx: service.Context, make_image: Callable[..., Path]
) -> Iterator[tuple[Path, Path]]:
    image = make_image(size=8 * testdisk.MiB)
    service.run_backup(ctx, "vm", [service.DiskSpec("os", str(image))])
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(["mount", "--bind", ctx.vault_path, str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], check=True)
        yield mount, image
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _env(vault: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": str(vault),
        "VMVAULT_CATALOG": f"sqlite:///{tmp_path / 'other-catalog.db'}",
    }


def test_reads_work_on_a_read_only_vault(
    tmp_path: Path, read_only_vault: tuple[Path, Path]
) -> None:
    vault, image = read_only_vault
    env = _env(vault, tmp_path)
    listing = run_cli("list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    assert len(json.loads(listing.stdout)["points"]) == 1
    verify = run_cli("verify", "latest", env=env)
    assert verify.returncode == 0, verify.stderr
    assert "read-only" in verify.stderr  # one warning: no lock could be taken
    check = run_cli("check", "--read-data", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    target = tmp_path / "restored.img"
    restore = run_cli("restore", "latest", str(target), env=env)
    assert restore.returncode == 0, restore.stderr
    assert same_content(image, target)


@pytest.mark.parametrize(
    "args",
    [("backup", "IMAGE", "--vm", "vm"), ("forget", "latest"), ("vault", "reindex")],
)
def test_writes_to_a_read_only_vault_are_one_error_line(
    tmp_path: Path, read_only_vault: tuple[Path, Path], args: tuple[str, ...]
) -> None:
    vault, image = read_only_vault
    argv = [str(image) if a == "IMAGE" else a for a in args]
    result = run_cli(*argv, env=_env(vault, tmp_path))
    assert result.returncode not in (0,), result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "read-only" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
