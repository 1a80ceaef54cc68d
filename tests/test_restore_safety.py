"""A restore writes only where it was asked to, never over a file it was not told to
replace, never through a symlink, and leaves nothing half-written behind."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import PASSPHRASE, run_cli, same_content
from vmvault import service, testdisk
from vmvault.engine.targets import TargetExists, new_files_folder, restore_target
from vmvault.inventory import parse_inventory

MiB = testdisk.MiB


def _env(ctx: service.Context, **extra: str) -> dict[str, str]:
    return {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        **extra,
    }


@pytest.fixture
def backed_up(ctx: service.Context, make_image: Callable[..., Path]) -> Path:
    image = make_image(size=8 * MiB)
    service.run_backup(ctx, "vm", [service.DiskSpec("os", str(image))])
    return image


def test_restore_refuses_an_existing_file_and_a_symlink(
    tmp_path: Path, ctx: service.Context, backed_up: Path
) -> None:
    env = _env(ctx)
    existing = tmp_path / "existing.img"
    existing.write_bytes(b"precious")
    result = run_cli("restore", "latest", str(existing), env=env)
    assert result.returncode == 2 and "--force" in result.stderr
    assert existing.read_bytes() == b"precious"

    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    link = tmp_path / "link.img"
    link.symlink_to(victim)
    result = run_cli("restore", "latest", str(link), env=env)
    assert result.returncode == 2 and victim.read_bytes() == b"not yours"
    forced = run_cli("restore", "latest", str(link), "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert victim.read_bytes() == b"not yours"  # the link was replaced, not written through
    assert not link.is_symlink() and same_content(backed_up, link)


def test_restore_onto_a_full_file_system_is_one_line_and_leaves_nothing(
    tmp_path: Path, ctx: service.Context, backed_up: Path
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        for args in ((), ("--json",)):
            result = run_cli("restore", "latest", str(small / "out.img"), *args, env=_env(ctx))
            assert result.returncode == 1
            if args:
                error = json.loads(result.stdout)["error"]
                assert error["code"] == "target_error" and "no space" in error["message"]
            else:
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and "no space left" in lines[0]
            assert "Traceback" not in result.stderr
            assert list(small.iterdir()) == []  # no partial file, no temporary one
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_a_read_only_target_is_one_line(
    tmp_path: Path, ctx: service.Context, backed_up: Path
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,ro", "tmpfs", str(folder)], check=True)
    try:
        result = run_cli("restore", "latest", str(folder / "out.img"), env=_env(ctx))
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1 and "read-only" in result.stderr
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _inventory(tmp_path: Path, image: Path) -> Path:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        f"""
[[vms]]
name = "vm"
  [[vms.disks]]
  name = "os"
  path = "{image}"
"""
    )
    return inventory


def test_vm_restore_validates_the_name_and_never_overwrites(
    tmp_path: Path, ctx: service.Context, backed_up: Path
) -> None:
    env = _env(ctx, VMVAULT_INVENTORY=str(_inventory(tmp_path, backed_up)))
    out = tmp_path / "restored"
    escape = run_cli("vm", "restore", "vm", "--as", "../x", "--to", str(out), env=env)
    assert escape.returncode == 2 and "cannot name a VM" in escape.stderr
    assert not (tmp_path / "x.toml").exists() and not out.exists()

    first = run_cli("vm", "restore", "vm", "--as", "copy", "--to", str(out), env=env)
    assert first.returncode == 0, first.stderr
    toml = out / "copy.toml"
    toml.write_text("# my edits\n")
    again = run_cli("vm", "restore", "vm", "--as", "copy", "--to", str(out), env=env)
    assert again.returncode == 2 and "--force" in again.stderr
    assert toml.read_text() == "# my edits\n"
    forced = run_cli("vm", "restore", "vm", "--as", "copy", "--to", str(out), "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert "[[vms]]" in toml.read_text()
    assert same_content(backed_up, out / "copy-os.img")


def test_a_symlink_planted_in_the_restore_root_after_acceptance_is_not_followed(
    tmp_path: Path, ctx: service.Context, backed_up: Path
) -> None:
    """The server accepted a restore as "copy" under its root; before the job runs, someone
    who can write the root plants root/copy -> /elsewhere."""
    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "copy").symlink_to(elsewhere)
    inventory = parse_inventory(_inventory(tmp_path, backed_up).read_text(), "inv.toml")
    with pytest.raises(TargetExists):
        service.run_vm_restore(
            ctx,
            inventory,
            "vm",
            new_name="copy",
            directory=str(root / "copy"),
            confine_to=str(root),
        )
    assert list(elsewhere.iterdir()) == []
    (root / "copy").unlink()
    done = service.run_vm_restore(
        ctx, inventory, "vm", new_name="copy", directory=str(root / "copy"), confine_to=str(root)
    )
    assert Path(done["disks"][0]["path"]).parent == root.resolve() / "copy"
    assert same_content(backed_up, root / "copy" / "copy-os.img")


def test_a_folder_swapped_for_a_symlink_during_the_restore_changes_nothing(
    tmp_path: Path,
) -> None:
    """Files are created through the folder's descriptor: renaming the folder away and
    planting a symlink under its name cannot redirect them."""
    folder = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with new_files_folder(folder) as through_fd:
        folder.rename(tmp_path / "moved")
        folder.symlink_to(elsewhere)
        with restore_target(through_fd / "disk.img") as prepared:
            Path(prepared.path).write_bytes(b"data")
    assert (tmp_path / "moved" / "disk.img").read_bytes() == b"data"
    assert list(elsewhere.iterdir()) == []


@pytest.fixture
def loop_file(tmp_path: Path) -> Iterator[Path]:
    backing = tmp_path / "device.bin"
    with open(backing, "wb") as f:
        f.truncate(16 * MiB)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield Path(device)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def test_a_symlink_to_a_block_device_is_a_device_target(
    tmp_path: Path, ctx: service.Context, backed_up: Path, loop_file: Path
) -> None:
    link = tmp_path / "lv"
    link.symlink_to(loop_file)  # as /dev/vg/lv is
    service.run_restore(ctx, "latest", str(link))
    with open(loop_file, "rb") as f:
        assert f.read(8 * MiB) == backed_up.read_bytes()
