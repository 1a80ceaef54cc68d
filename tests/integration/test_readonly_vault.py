"""A vault on a read-only mount (a copy, a snapshot) can be listed, verified, checked and
restored from; what would write to it fails with one clear line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli, same_content
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point


@pytest.fixture
def read_only_vault(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> Iterator[tuple[Path, Path]]:
    image = make_image(size=8 * testdisk.MiB)
    run_backup(ctx, "vm", [DiskSpec("os", str(image))])
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
    [
        ("backup", "IMAGE", "--vm", "vm"),
        ("forget", "latest"),
        ("vault", "reindex"),
        ("gc", "--grace", "0"),
        ("prune", "--inventory", "INVENTORY"),
    ],
)
def test_writes_to_a_read_only_vault_are_one_error_line(
    tmp_path: Path,
    ctx: Context,
    make_image: Callable[..., Path],
    read_only_vault: tuple[Path, Path],
    args: tuple[str, ...],
) -> None:
    vault, image = read_only_vault
    # Work for gc and prune, made through the writable path (the mount shows it): a
    # forgotten point's chunks to free, and a second point of the VM that a policy keeping
    # one point a day prunes. With nothing to do they would rightly write nothing.
    if args[0] == "gc":
        other = make_image("other.img", size=4 * testdisk.MiB, seed=9)
        point = run_backup(ctx, "other", [DiskSpec("os", str(other))])
        forget_point(ctx, point["id"])
    if args[0] == "prune":
        run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[policies.one]\nschedule = { kind = "daily", time = "22:30", timezone = "UTC" }\n'
        'retention = { daily_days = 1 }\n\n[[vms]]\nname = "vm"\npolicy = "one"\n'
        f'  [[vms.disks]]\n  name = "os"\n  path = "{image}"\n'
    )
    argv = [{"IMAGE": str(image), "INVENTORY": str(inventory)}.get(a, a) for a in args]
    result = run_cli(*argv, env=_env(vault, tmp_path))
    assert result.returncode not in (0,), result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "read-only" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


NOBODY = 65534


def _as_nobody(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real CLI run by an unprivileged user (root passes every permission check)."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-c",
            "from vmvault.cli.main import run; run()",
            *args,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.fixture
def shared_copy(ctx: Context, make_image: Callable[..., Path]) -> Iterator[tuple[Path, Path, Path]]:
    """A copy of a vault with one point, owned by root, and a folder of nobody's own
    (its catalog, restore targets): outside pytest's tmp folder, which nobody may enter."""
    image = make_image(size=8 * testdisk.MiB)
    run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    base = Path(tempfile.mkdtemp(prefix="vmvault-eacces-"))
    try:
        base.chmod(0o755)
        vault = base / "vault"
        shutil.copytree(ctx.vault_path, vault)
        home = base / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        shutil.copy(image, base / "disk.img")
        (base / "disk.img").chmod(0o644)
        yield vault, home, base / "disk.img"
    finally:
        shutil.rmtree(base)


def _grant_read(vault: Path) -> None:
    """Everyone may read the vault (a shared, read-only copy); only root may write it."""
    for folder, _, files in os.walk(vault):
        Path(folder).chmod(0o755)
        for name in files:
            (Path(folder) / name).chmod(0o644)


def _nobody_env(vault: Path, home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        # nobody's own caches (the host's chunk index), not the test run's, which is root's
        "VMVAULT_CACHE_DIR": str(home / ".cache" / "vmvault"),
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": str(vault),
        "VMVAULT_CATALOG": f"sqlite:///{home / 'catalog.db'}",
    }


def test_a_vault_nobody_may_write_is_read_with_a_warning(
    shared_copy: tuple[Path, Path, Path],
) -> None:
    vault, home, image = shared_copy
    _grant_read(vault)
    env = _nobody_env(vault, home)
    listing = _as_nobody("list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    assert len(json.loads(listing.stdout)["points"]) == 1
    verify = _as_nobody("verify", "latest", env=env)
    assert verify.returncode == 0, verify.stderr
    assert "permission denied" in verify.stderr and "without a lock" in verify.stderr
    check = _as_nobody("check", "--read-data", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    target = home / "restored.img"
    restore = _as_nobody("restore", "latest", str(target), env=env)
    assert restore.returncode == 0, restore.stderr
    assert same_content(image, target)
    backup = _as_nobody("backup", str(image), "--vm", "vm", env=env)
    assert backup.returncode != 0
    lines = backup.stderr.strip().splitlines()
    assert len(lines) == 1 and "may not be written (permission denied)" in lines[0], lines


@pytest.mark.parametrize("hidden", ["objects", "packs folder", "points folder"])
def test_a_vault_nobody_may_read_is_one_error_line(
    shared_copy: tuple[Path, Path, Path], hidden: str
) -> None:
    """Objects as vmvault writes them (0600) or a folder closed to others: one error line
    that says so, not a traceback, and never "missing" or "damaged" objects."""
    vault, home, _ = shared_copy
    _grant_read(vault)
    if hidden == "objects":
        for folder, _, files in os.walk(vault / "packs"):
            for name in files:
                (Path(folder) / name).chmod(0o600)
    else:
        (vault / hidden.split()[0]).chmod(0o700)
    env = _nobody_env(vault, home)
    for args in (("verify", "latest"), ("check", "--read-data"), ("list",)):
        result = _as_nobody(*args, env=env)
        if args == ("list",) and hidden != "points folder":
            assert result.returncode == 0, result.stderr  # a listing reads no pack
            continue
        assert result.returncode not in (0, 3), (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert "Traceback" not in result.stderr, result.stderr
        assert "may not be read" in lines[-1] and len(lines) <= 2, (args, lines)
