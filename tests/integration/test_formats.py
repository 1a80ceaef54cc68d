"""qcow2, VHD and VHDX images made and written by QEMU's own tools: backed up as the guest
sees them, restored into the same format or raw, identical by `qemu-img compare`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore

MiB = 1 << 20
WRITES = [
    "write -P 0x5a 1M 192k",
    "write -P 0x00 8M 64k",
    "write -P 0x17 40M 1M",
    "write -P 0xc3 63M 512k",
]


def _make(path: Path, fmt: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), "64M"], check=True)
    args = ["qemu-io", "-f", fmt]
    for w in WRITES:
        args += ["-c", w]
    subprocess.run([*args, str(path)], check=True, capture_output=True)


def _compare(a: Path, fa: str, b: Path, fb: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-img", "compare", "-f", fa, "-F", fb, str(a), str(b)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("fmt", ["qcow2", "vpc", "vhdx"])
def test_image_format_round_trip(tmp_path: Path, ctx: Context, fmt: str) -> None:
    image = tmp_path / f"disk.{fmt}"
    _make(image, fmt)
    point = run_backup(ctx, "vm", [DiskSpec("os", str(image), format=fmt)])
    disk = point["disks"][0]
    assert disk["format"] == fmt and disk["source"] == str(image)
    assert disk["size"] >= 64 * MiB  # the guest-visible size, not the file's
    if fmt == "vhdx":
        # QEMU 7.2's vhdx driver reports no allocation map: the whole disk is read, and
        # the unwritten blocks are recognised as zeros and cost nothing
        assert disk["stats"]["zero"] >= 56 * MiB
    else:  # only allocated clusters are read: about the 1.75 MiB written, not 64 MiB
        assert disk["stats"]["read"] <= 8 * MiB
    assert disk["stats"]["new"] <= 2 * MiB

    same = tmp_path / f"restored.{fmt}"
    run_restore(ctx, point["id"], str(same), target_format=fmt)
    assert _compare(image, fmt, same, fmt).returncode == 0
    if fmt != "vpc":  # qemu-img has no consistency check for VHD
        check = subprocess.run(
            ["qemu-img", "check", "-f", fmt, str(same)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
    raw = tmp_path / "restored.raw"
    run_restore(ctx, point["id"], str(raw))
    assert _compare(image, fmt, raw, "raw").returncode == 0


def test_qcow2_restore_stays_compact(tmp_path: Path, ctx: Context) -> None:
    image = tmp_path / "disk.qcow2"
    _make(image, "qcow2")
    point = run_backup(ctx, "vm", [DiskSpec("os", str(image), format="qcow2")])
    out = tmp_path / "out.qcow2"
    run_restore(ctx, point["id"], str(out), target_format="qcow2")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["actual-size"] < 8 * MiB  # zero chunks were never written


def test_wrong_format_is_one_clear_error(tmp_path: Path, ctx: Context) -> None:
    image = tmp_path / "disk.qcow2"
    _make(image, "qcow2")
    scratch = tmp_path / "scratch"  # where the export's mountpoint goes (TMPDIR)
    scratch.mkdir()
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "TMPDIR": str(scratch),
    }
    wrong = run_cli("backup", str(image), "--vm", "x", "--format", "vhdx", env=env)
    assert wrong.returncode == 1 and wrong.stderr.startswith(f"error: cannot open {image} as vhdx")
    unknown = run_cli("backup", str(image), "--vm", "x", "--format", "vmdk9", env=env)
    assert unknown.returncode == 2 and "unknown disk format 'vmdk9'" in unknown.stderr
    assert not list(scratch.iterdir())  # the export (FUSE mount and its directory) is gone
