"""A backup killed with SIGKILL leaves earlier points intact; the re-run reuses its chunks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli, same_content
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore
from vmvault.app.vaults import init_vault, run_check

MiB = testdisk.MiB


def test_sigkill_midway_then_rerun(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    ctx = Context(str(tmp_path / "vault"), f"sqlite:///{tmp_path / 'catalog.db'}")
    init_vault(ctx, pack_target=1 * MiB)  # small packs: some are durable before the kill
    first_image = make_image("first.img", size=16 * MiB, seed=1)
    first = run_backup(ctx, "vm", [DiskSpec("os", str(first_image))])

    second_image = make_image("second.img", size=64 * MiB, seed=5)
    env = {
        **os.environ,
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from vmvault.cli.main import run; run()",
            "backup",
            str(second_image),
            "--vm",
            "vm",
            "--disk-name",
            "os",
            "--limit-rate",
            "4",
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    packs_dir = Path(ctx.vault_path) / "packs"
    baseline = sum(1 for p in packs_dir.rglob("*") if p.is_file())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once a few packs of the second run are durable
        if sum(1 for p in packs_dir.rglob("*") if p.is_file()) >= baseline + 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the throttled backup finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    vault = ctx.open_vault()
    assert vault.point_ids() == [first["id"]]  # no half point is visible
    report = run_check(ctx, read_data=True)
    assert report.ok, [p.message for p in report.problems]
    out = tmp_path / "first-restored.img"
    run_restore(ctx, first["id"], str(out))
    assert same_content(first_image, out)

    rerun = run_backup(ctx, "vm", [DiskSpec("os", str(second_image))])
    stats = rerun["disks"][0]["stats"]
    assert stats["deduplicated"] > 0  # chunks the killed run wrote are reused
    assert run_check(ctx, read_data=True).ok
    out2 = tmp_path / "second-restored.img"
    run_restore(ctx, rerun["id"], str(out2))
    assert same_content(second_image, out2)
    # the catalog never shows the killed job as running forever: it has no row at all
    # (it died before finishing) or a finished one; the re-run's job succeeded
    jobs = ctx.catalog().jobs(vault.config.vault_id)
    assert jobs[0].state == "succeeded"


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 12 MiB file system (tmpfs) that a backup can fill up."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_disk_fails_cleanly_and_keeps_earlier_points(
    tmp_path: Path, small_filesystem: Path
) -> None:
    ctx = Context(str(small_filesystem / "vault"), f"sqlite:///{tmp_path / 'c.db'}")
    init_vault(ctx, pack_target=1 * MiB)
    small = tmp_path / "small.img"
    small.write_bytes(os.urandom(3 * MiB))
    first = run_backup(ctx, "vm", [DiskSpec("os", str(small))])
    big = tmp_path / "big.img"
    big.write_bytes(os.urandom(24 * MiB))
    result = run_cli(
        "backup",
        str(big),
        "--vm",
        "vm",
        "--disk-name",
        "os",
        env={
            "VMVAULT_PASSPHRASE": PASSPHRASE,
            "VMVAULT_VAULT": ctx.vault_path,
            "VMVAULT_CATALOG": str(ctx.catalog_url),
        },
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: no space left") and "Traceback" not in result.stderr
    vault = ctx.open_vault()
    assert vault.point_ids() == [first["id"]]
    assert not list(Path(ctx.vault_path).rglob(".tmp-*"))  # no half-written objects left
    assert run_check(ctx, read_data=True).ok
    out = tmp_path / "restored.img"
    run_restore(ctx, first["id"], str(out))
    assert same_content(small, out)
    backups = [j for j in ctx.catalog().jobs(vault.config.vault_id) if j.kind == "backup"]
    assert [(j.state, j.error_code) for j in backups] == [
        ("failed", "backend_full"),
        ("succeeded", None),
    ]
