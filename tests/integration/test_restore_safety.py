"""A restore writes only where it was asked to, never over a file it was not told to
replace, never through a symlink, and leaves nothing half-written behind."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from support.cli import PASSPHRASE, run_cli, same_content
from support.serverkit import make_site
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore
from vmvault.app.vm_backup import run_vm_backup
from vmvault.app.vm_restore import run_vm_restore
from vmvault.engine.targets import TargetExists, new_files_folder, restore_target
from vmvault.errors import UsageError, VmvaultError
from vmvault.inventory import parse_inventory
from vmvault.server.app import create_app

MiB = testdisk.MiB


def _env(ctx: Context, **extra: str) -> dict[str, str]:
    return {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        **extra,
    }


@pytest.fixture
def backed_up(ctx: Context, make_image: Callable[..., Path]) -> Path:
    image = make_image(size=8 * MiB)
    run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    return image


def test_restore_refuses_an_existing_file_and_a_symlink(
    tmp_path: Path, ctx: Context, backed_up: Path
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
    tmp_path: Path, ctx: Context, backed_up: Path
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


def test_a_read_only_target_is_one_line(tmp_path: Path, ctx: Context, backed_up: Path) -> None:
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
    tmp_path: Path, ctx: Context, backed_up: Path
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
    tmp_path: Path, ctx: Context, backed_up: Path
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
        run_vm_restore(
            ctx,
            inventory,
            "vm",
            new_name="copy",
            directory=str(root / "copy"),
            confine_to=str(root),
        )
    assert list(elsewhere.iterdir()) == []
    (root / "copy").unlink()
    done = run_vm_restore(
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
    tmp_path: Path, ctx: Context, backed_up: Path, loop_file: Path
) -> None:
    link = tmp_path / "lv"
    link.symlink_to(loop_file)  # as /dev/vg/lv is
    run_restore(ctx, "latest", str(link))
    with open(loop_file, "rb") as f:
        assert f.read(8 * MiB) == backed_up.read_bytes()


def test_a_block_device_is_restored_onto_without_force(
    ctx: Context, backed_up: Path, loop_file: Path
) -> None:
    run_restore(ctx, "latest", str(loop_file))
    with open(loop_file, "rb") as f:
        assert f.read(8 * MiB) == backed_up.read_bytes()


def test_a_dangling_symlink_target_is_refused_before_anything_is_restored(
    tmp_path: Path, ctx: Context, backed_up: Path
) -> None:
    link = tmp_path / "out.img"
    link.symlink_to(tmp_path / "nowhere" / "disk.img")
    with pytest.raises(TargetExists, match="symlink") as refused:
        run_restore(ctx, "latest", str(link))
    assert "appeared during" not in refused.value.message  # refused up front, not at the end
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
    run_restore(ctx, "latest", str(link), force=True)
    assert not link.is_symlink() and same_content(backed_up, link)


def test_a_device_planted_in_the_folder_of_a_new_vm_is_not_written(
    tmp_path: Path, ctx: Context, backed_up: Path, loop_file: Path
) -> None:
    """`vm restore --as copy --to DIR` makes new files: a symlink to a device planted at one
    of their names by someone who can write DIR is refused like any existing file."""
    inventory = parse_inventory(_inventory(tmp_path, backed_up).read_text(), "inv.toml")
    folder = tmp_path / "restored"
    folder.mkdir()
    (folder / "copy-os.img").symlink_to(loop_file)
    with pytest.raises(TargetExists, match="--force"):
        run_vm_restore(ctx, inventory, "vm", new_name="copy", directory=str(folder))
    with open(loop_file, "rb") as f:
        assert f.read(8 * MiB) == bytes(8 * MiB)  # the device kept its zeros
    assert sorted(p.name for p in folder.iterdir()) == ["copy-os.img"]


def test_in_place_restore_of_a_disk_on_a_device_writes_the_device(
    tmp_path: Path, ctx: Context, backed_up: Path, loop_file: Path
) -> None:
    """An LVM disk is named through a symlink (/dev/vg/lv): restoring the VM in place writes
    the device, it does not replace the link with a file beside it."""
    with open(loop_file, "r+b") as f:
        f.write(backed_up.read_bytes())
    link = tmp_path / "vg" / "lv"
    link.parent.mkdir()
    link.symlink_to(loop_file)
    inventory = parse_inventory(
        f"""
[[vms]]
name = "lvm-vm"
state = "stopped"
  [[vms.disks]]
  name = "os"
  path = "{link}"
""",
        "inv.toml",
    )
    point = run_vm_backup(ctx, inventory, "lvm-vm")["id"]
    with open(loop_file, "r+b") as f:
        f.write(b"\xff" * MiB)  # the guest broke its disk
    run_vm_restore(ctx, inventory, "lvm-vm", point_ref=point, in_place=True, confirmed=True)
    assert link.is_symlink() and link.resolve() == loop_file.resolve()
    assert list(link.parent.iterdir()) == [link]  # no temporary file left beside it
    with open(loop_file, "rb") as f:
        assert f.read(8 * MiB) == backed_up.read_bytes()


def test_an_image_restore_onto_a_full_file_system_leaves_nothing(
    tmp_path: Path, ctx: Context, backed_up: Path
) -> None:
    """qcow2 through QEMU's writable export: full midway (the image outgrows 2 MiB), or
    full before the image can even be created. One error naming the target, nothing left,
    no export still holding the file system (the unmount would fail)."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        target = small / "out.qcow2"
        result = run_cli("restore", "latest", str(target), "-f", "qcow2", "--json", env=_env(ctx))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["code"] == "target_error" and "no space" in error["message"], error
        assert list(small.iterdir()) == []

        (small / "filler").write_bytes(b"x" * (2 * MiB - 4096))  # room for no qcow2 header
        with pytest.raises(VmvaultError) as failed:
            run_restore(ctx, "latest", str(target), target_format="qcow2")
        message = failed.value.message
        assert str(target) in message and "/proc/" not in message and "\n" not in message
        assert "No space left" in message
        assert sorted(p.name for p in small.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(small)], check=True)


NOBODY = 65534


def test_a_folder_the_user_may_not_write_is_one_line(ctx: Context, backed_up: Path) -> None:
    """EACCES: the CLI run by an unprivileged user (root passes every permission check)
    into a folder of root's."""
    base = Path(tempfile.mkdtemp(prefix="vmvault-eacces-"))
    try:
        base.chmod(0o755)
        shutil.copytree(ctx.vault_path, base / "vault")
        for folder, _, files in os.walk(base / "vault"):
            os.chown(folder, NOBODY, NOBODY)
            for name in files:
                os.chown(Path(folder) / name, NOBODY, NOBODY)
        home = base / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        roots = base / "roots"
        roots.mkdir(mode=0o755)
        env = {
            **os.environ,
            "HOME": str(home),
            # nobody's own caches (the host's chunk index), not the test run's (root's)
            "VMVAULT_CACHE_DIR": str(home / ".cache" / "vmvault"),
            "VMVAULT_PASSPHRASE": PASSPHRASE,
            "VMVAULT_VAULT": str(base / "vault"),
            "VMVAULT_CATALOG": f"sqlite:///{home / 'catalog.db'}",
        }
        for json_output in (False, True):
            result = subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
                + [sys.executable, "-c", "from vmvault.cli.main import run; run()"]
                + ["restore", "latest", str(roots / "out.img")]
                + (["--json"] if json_output else []),
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            if json_output:
                error = json.loads(result.stdout)["error"]
                assert error["code"] == "target_error" and "permission denied" in error["message"]
            else:
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and "permission denied" in lines[0], lines
            assert list(roots.iterdir()) == []
    finally:
        shutil.rmtree(base)


def test_an_api_restore_does_not_follow_a_symlink_planted_after_it_was_accepted(
    tmp_path: Path,
) -> None:
    """The real app accepts the restore (202); before a worker (`vmvault worker`, a
    separate process) runs it, someone who can write the restore root plants
    root/copy -> elsewhere. The job fails with one error and nothing lands elsewhere."""
    site = make_site(tmp_path / "site")
    config = dataclasses.replace(site.config, worker=False)  # the job waits for our worker
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with TestClient(create_app(config)) as client:
        queued = client.post(
            "/api/v1/restores",
            headers=site.auth("operator"),
            json={"vm": "web01", "new_name": "copy"},
        )
        assert queued.status_code == 202, queued.text
        (Path(config.restore_root or "") / "copy").symlink_to(elsewhere)
        worker = run_cli(
            "worker",
            "--once",
            env={
                "VMVAULT_PASSPHRASE_FILE": config.passphrase_file or "",
                "VMVAULT_VAULT": config.vault,
                "VMVAULT_CATALOG": str(config.catalog_url),
                "VMVAULT_INVENTORY": config.inventory or "",
            },
        )
        assert worker.returncode == 0, worker.stderr
        job = client.get(f"/api/v1/jobs/{queued.json()['id']}", headers=site.auth("reader"))
    assert job.json()["state"] == "failed", job.json()
    assert job.json()["error_code"] == "target_exists", job.json()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("kind", ["folder", "fifo", "link to a folder", "link to /dev/null"])
def test_a_target_that_is_neither_a_file_nor_a_block_device_is_refused(
    tmp_path: Path, kind: str
) -> None:
    """Refused without --force, and with it too (nothing to replace it with safely); a FIFO
    is never opened, so nothing blocks."""
    target = tmp_path / "target"
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "link to a folder":
        (tmp_path / "folder").mkdir()
        target.symlink_to(tmp_path / "folder")
    else:
        target.symlink_to("/dev/null")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TargetExists), restore_target(target):
        pytest.fail("prepared a target that exists")
    with (
        pytest.raises(UsageError, match="neither a file nor a block device") as refused,
        restore_target(target, force=True),
    ):
        pytest.fail("prepared a target that is neither a file nor a block device")
    assert not isinstance(refused.value, TargetExists)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_instant_restore_onto_a_full_file_system_is_one_error(
    tmp_path: Path, ctx: Context, backed_up: Path
) -> None:
    """A point whose snapshot is kept beside the disk is copied from it, not read from the
    vault: that copy meets a full file system as one error too, and leaves nothing."""
    from vmvault.snapshot import instant

    inventory = parse_inventory(
        f"""
[policies.p]
schedule = {{ kind = "daily", time = "22:30" }}
retention = {{ instant_restore_days = 2 }}

[[vms]]
name = "kept"
state = "running"
snapshot = "copy"
policy = "p"
  [[vms.disks]]
  name = "os"
  path = "{backed_up}"
""",
        "inv.toml",
    )
    point = run_vm_backup(ctx, inventory, "kept")["id"]
    assert (tmp_path / instant.INSTANT_DIR / point / "os").exists()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(VmvaultError) as failed:
            run_restore(ctx, point, str(small / "out.img"))
        assert failed.value.code == "target_error" and "no space" in failed.value.message
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
    restored = run_restore(ctx, point, str(tmp_path / "out.img"))
    assert restored.source == "instant"  # the test took the instant road


def test_a_vm_restore_that_runs_out_of_space_leaves_no_half_vm(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    """The first disk fits, the second does not: one error naming the disk's path (also in
    the job history: not /proc/PID/fd/N/..., the folder's descriptor), and neither the
    first disk nor the folder the restore made stays (the same name can be used again)."""
    first = make_image("first.img", size=8 * MiB, seed=1)
    second = make_image("second.img", size=24 * MiB, seed=2)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        f"""
[[vms]]
name = "vm"
state = "stopped"
  [[vms.disks]]
  name = "a"
  path = "{first}"
  [[vms.disks]]
  name = "b"
  path = "{second}"
"""
    )
    run_vm_backup(ctx, parse_inventory(inventory.read_text(), "inv.toml"), "vm")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        env = _env(ctx, VMVAULT_INVENTORY=str(inventory))
        args = ("vm", "restore", "vm", "--as", "copy", "--to", str(small / "copy"), "--json")
        result = run_cli(*args, env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["code"] == "target_error" and "no space" in error["message"], error
        assert f"restore to {small / 'copy' / 'copy-b.img'}: " in error["message"], error
        vault_id = ctx.open_vault(load_index=False).config.vault_id
        assert ctx.catalog().jobs(vault_id)[0].error_message == error["message"]
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
