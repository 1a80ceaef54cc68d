"""A backup killed with SIGKILL leaves earlier points intact; the re-run reuses its chunks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import PASSPHRASE, same_content
from vmvault import service, testdisk

MiB = testdisk.MiB


def test_sigkill_midway_then_rerun(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    ctx = service.Context(str(tmp_path / "vault"), f"sqlite:///{tmp_path / 'catalog.db'}")
    service.init_vault(ctx, pack_target=1 * MiB)  # small packs: some are durable before the kill
    first_image = make_image("first.img", size=16 * MiB, seed=1)
    first = service.run_backup(ctx, "vm", [("os", str(first_image))])

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
    report = service.run_check(ctx, read_data=True)
    assert report.ok, [p.message for p in report.problems]
    out = tmp_path / "first-restored.img"
    service.run_restore(ctx, first["id"], str(out))
    assert same_content(first_image, out)

    rerun = service.run_backup(ctx, "vm", [("os", str(second_image))])
    stats = rerun["disks"][0]["stats"]
    assert stats["deduplicated"] > 0  # chunks the killed run wrote are reused
    assert service.run_check(ctx, read_data=True).ok
    out2 = tmp_path / "second-restored.img"
    service.run_restore(ctx, rerun["id"], str(out2))
    assert same_content(second_image, out2)
    # the catalog never shows the killed job as running forever: it has no row at all
    # (it died before finishing) or a finished one; the re-run's job succeeded
    jobs = ctx.catalog().jobs(vault.config.vault_id)
    assert jobs[0].state == "succeeded"
