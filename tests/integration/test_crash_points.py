"""SIGKILL at random moments of backup, prune, GC and restore never hurts a committed point.

Each case copies one prepared vault (three points of a VM whose disk changed between them,
small packs so every operation writes or deletes many objects), starts the real CLI on it,
kills it with SIGKILL after a seeded random delay, and then demands: `check --read-data`
finds no error, and every point that exists restores byte-identical to the disk it was
taken of. A later operation of the same kind must then succeed on the vault as left.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.cli import PASSPHRASE
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import PASSPHRASE_ENV, Context
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point
from vmvault.app.restore import run_restore
from vmvault.app.vaults import init_vault, run_check

MiB = testdisk.MiB
SIZE = 24 * MiB
OPS = ("backup", "prune", "gc", "restore")
# Seeded kill moments per operation: 6 x 4 = 24 crashes, spread over the operation itself
# (after the interpreter's start, up to its measured end).
CASES = [(op, seed) for op in OPS for seed in range(6)]

INVENTORY = """
[policies.short]
schedule = {{ kind = "daily", time = "22:00", timezone = "UTC" }}
retention = {{ daily_days = 7 }}

[[vms]]
name = "vm"
policy = "short"
  [[vms.disks]]
  name = "os"
  path = "{image}"
"""


@dataclass(frozen=True)
class Template:
    root: Path
    digests: dict[str, str]  # point id -> sha256 of the disk it was taken of
    image: Path


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    os.environ[PASSPHRASE_ENV] = PASSPHRASE
    root = tmp_path_factory.mktemp("crash-template")
    ctx = Context(str(root / "vault"), f"sqlite:///{root / 'catalog.db'}")
    init_vault(ctx, pack_target=256 * 1024)  # many small packs
    image = root / "disk.img"
    testdisk.create_disk(image, SIZE, seed=3, jobs=1)
    digests = {}
    for seed in range(3):
        point = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
        digests[point["id"]] = _digest(image)
        testdisk.mutate_disk(image, 20, seed=10 + seed, jobs=1)
    (root / "inventory.toml").write_text(INVENTORY.format(image=image))
    return Template(root, digests, image)


def _copy(template: Template, dest: Path) -> Context:
    shutil.copytree(template.root / "vault", dest / "vault", symlinks=True)
    for part in template.root.glob("catalog.db*"):  # with SQLite's WAL, if any
        shutil.copy2(part, dest / part.name)
    shutil.copy2(template.image, dest / "disk.img")
    (dest / "inventory.toml").write_text(INVENTORY.format(image=dest / "disk.img"))
    return Context(str(dest / "vault"), f"sqlite:///{dest / 'catalog.db'}")


def _command(op: str, dest: Path, attempt: int) -> list[str]:
    if op == "backup":
        return ["backup", str(dest / "disk.img"), "--vm", "vm", "--disk-name", "os"]
    if op == "prune":
        return ["prune", "--inventory", str(dest / "inventory.toml")]
    if op == "gc":
        return ["gc", "--grace", "0", "--repack-threshold", "0.01"]
    return ["restore", "latest", str(dest / f"restored-{attempt}.img")]


def _run_and_kill(op: str, dest: Path, ctx: Context, delay: float, attempt: int = 0) -> int | None:
    """Run ``op`` through the CLI; SIGKILL it if it still runs after ``delay`` seconds."""
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
            *_command(op, dest, attempt),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        return proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        return None


def _prepare(op: str, template: Template, dest: Path, ctx: Context, seed: int) -> None:
    if op == "backup":
        testdisk.mutate_disk(dest / "disk.img", 30, seed=100 + seed, jobs=1)
    if op == "gc":  # garbage to collect: the oldest point's unique chunks
        forget_point(ctx, min(template.digests))


@pytest.fixture(scope="module")
def windows(
    template: Template, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[float, float]]:
    """Per operation: from when the CLI has started to when the operation ends, measured."""
    root = tmp_path_factory.mktemp("crash-windows")
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "from vmvault.cli.main import run; run()", "version"],
        check=True,
        capture_output=True,
    )
    startup = time.monotonic() - started
    found = {}
    for op in OPS:
        dest = root / op
        dest.mkdir()
        ctx = _copy(template, dest)
        _prepare(op, template, dest, ctx, 0)
        started = time.monotonic()
        assert _run_and_kill(op, dest, ctx, 300.0) == 0
        found[op] = (startup * 0.8, max(time.monotonic() - started, startup * 1.2))
    return found


def _assert_intact(ctx: Context, template: Template, dest: Path) -> None:
    report = run_check(ctx, read_data=True)
    assert report.ok, [p.to_dict() for p in report.problems if p.severity == "error"]
    vault = ctx.open_vault(load_index=False)
    for point_id in vault.point_ids():
        expected = template.digests.get(point_id)
        target = dest / f"check-{point_id}.img"
        run_restore(ctx, point_id, str(target))
        if expected is not None:  # a point committed after the copy is new: its own check
            assert _digest(target) == expected, f"{point_id} restored differently"
        target.unlink()


@pytest.mark.parametrize(("op", "seed"), CASES)
def test_sigkill_never_hurts_a_committed_point(
    template: Template, windows: dict[str, tuple[float, float]], tmp_path: Path, op: str, seed: int
) -> None:
    ctx = _copy(template, tmp_path)
    _prepare(op, template, tmp_path, ctx, seed)
    lo, hi = windows[op]
    delay = random.Random(f"{op}-{seed}").uniform(lo, hi)
    _run_and_kill(op, tmp_path, ctx, delay)

    _assert_intact(ctx, template, tmp_path)
    # the vault as the kill left it takes the same operation again
    again = _run_and_kill(op, tmp_path, ctx, 120.0, attempt=1)
    assert again == 0, f"{op} after a crash failed"
    _assert_intact(ctx, template, tmp_path)
    if op == "backup":
        restored = tmp_path / "latest.img"
        run_restore(ctx, "latest", str(restored))
        assert _digest(restored) == _digest(tmp_path / "disk.img")
