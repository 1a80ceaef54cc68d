"""qcow2, VHD and VHDX images made and written by QEMU's own tools: backed up as the guest
sees them, restored into the same format or raw, identical by `qemu-img compare`; and the
format of an image taken from its header, or checked against it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli, same_content
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore
from vmvault.errors import FormatMismatch, ImageFormatRefused

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


def _cli_env(ctx: Context, scratch: Path | None = None) -> dict[str, str]:
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
    }
    if scratch is not None:
        env["TMPDIR"] = str(scratch)  # where an export's mountpoint goes
    return env


def test_wrong_format_is_one_clear_error(tmp_path: Path, ctx: Context) -> None:
    image = tmp_path / "disk.qcow2"
    _make(image, "qcow2")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = _cli_env(ctx, scratch)
    wrong = run_cli("backup", str(image), "--vm", "x", "--format", "vhdx", env=env)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert wrong.stderr.startswith(f"error: disk {image} is a qcow2 image, not vhdx")
    # forced, the header is not looked at: QEMU itself refuses to open it as vhdx
    forced = run_cli(
        "backup", str(image), "--vm", "x", "--format", "vhdx", "--force-format", env=env
    )
    assert forced.returncode == 1
    assert forced.stderr.startswith(f"error: cannot open {image} as vhdx")
    unknown = run_cli("backup", str(image), "--vm", "x", "--format", "vmdk9", env=env)
    assert unknown.returncode == 2 and "unknown disk format 'vmdk9'" in unknown.stderr
    assert not list(scratch.iterdir())  # the export (FUSE mount and its directory) is gone


def test_a_qcow2_image_given_no_format_is_read_as_qcow2_and_says_so(
    tmp_path: Path, ctx: Context
) -> None:
    image = tmp_path / "web01.qcow2"
    _make(image, "qcow2")
    env = _cli_env(ctx)
    done = run_cli("backup", str(image), "--vm", "web01", "--json", env=env)
    assert done.returncode == 0, done.stderr
    disk = json.loads(done.stdout)["disks"][0]
    assert (disk["format"], disk["format_from"]) == ("qcow2", "detected")
    assert disk["size"] == 64 * MiB and disk["stats"]["read"] <= 8 * MiB  # the guest's view
    human = run_cli("backup", str(image), "--vm", "web01", env=env)
    assert "web01: read as qcow2, the format its header names" in human.stdout
    raw = tmp_path / "restored.raw"
    run_restore(ctx, "latest", str(raw))
    assert _compare(image, "qcow2", raw, "raw").returncode == 0


def test_raw_images_are_read_as_raw_declared_or_not(tmp_path: Path, ctx: Context) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(MiB))
    detected = run_backup(ctx, "vm", [DiskSpec("os", str(image))])["disks"][0]
    assert (detected["format"], detected["format_from"]) == ("raw", "detected")
    declared = run_backup(ctx, "vm", [DiskSpec("os", str(image), format="raw")])["disks"][0]
    assert (declared["format"], declared["format_from"]) == ("raw", "declared")
    assert declared["manifest"] == detected["manifest"]


def test_a_declared_format_the_header_contradicts_is_refused_unless_forced(
    tmp_path: Path, ctx: Context
) -> None:
    image = tmp_path / "disk.img"
    _make(image, "qcow2")
    env = _cli_env(ctx)
    refused = run_cli("backup", str(image), "--vm", "x", "--format", "raw", env=env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"error: disk {image} is a qcow2 image, not raw")
    assert "--force-format" in refused.stderr
    as_json = run_cli("backup", str(image), "--vm", "x", "--format", "raw", "--json", env=env)
    assert json.loads(as_json.stdout)["error"]["code"] == "format_mismatch"
    assert run_cli("list", "--json", env=env).stdout.count('"id"') == 0  # no point

    forced = run_cli(
        "backup", str(image), "--vm", "x", "--format", "raw", "--force-format", "--json", env=env
    )
    assert forced.returncode == 0, forced.stderr
    disk = json.loads(forced.stdout)["disks"][0]
    assert (disk["format"], disk["format_from"]) == ("raw", "forced")
    out = tmp_path / "out.img"
    run_restore(ctx, "latest", str(out))
    assert same_content(image, out)  # the file's own bytes, header and all

    alone = run_cli("backup", str(image), "--vm", "x", "--force-format", env=env)
    assert alone.returncode == 2 and "--force-format needs --format" in alone.stderr


def test_a_header_naming_a_backing_file_is_followed_only_when_declared(
    tmp_path: Path, ctx: Context
) -> None:
    # A guest owns its raw disk's bytes: made to look like a qcow2 overlay of a host file,
    # a probed header must not make the backup read that file.
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"host secret " * 8192)
    disk = tmp_path / "guest.img"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(disk)],
        check=True,
    )
    with open(disk, "r+b") as f:  # the rest of a raw disk: the guest's data
        f.truncate(4 * MiB)
    env = _cli_env(ctx)
    probed = run_cli("backup", str(disk), "--vm", "guest", env=env)
    assert probed.returncode == 2 and probed.stderr.count("\n") == 1
    assert f"is a qcow2 image with a backing file ({secret})" in probed.stderr
    declared_raw = run_cli("backup", str(disk), "--vm", "guest", "--format", "raw", env=env)
    assert declared_raw.returncode == 2 and "is a qcow2 image, not raw" in declared_raw.stderr
    forced = run_cli(
        "backup", str(disk), "--vm", "guest", "--format", "raw", "--force-format", env=env
    )
    assert forced.returncode == 0, forced.stderr
    out = tmp_path / "out.img"
    run_restore(ctx, "latest", str(out))
    assert same_content(disk, out)
    assert b"host secret" not in out.read_bytes()

    # Declared, an overlay is read with its backing file, as the guest sees it.
    overlay = tmp_path / "overlay.qcow2"
    base = tmp_path / "base.qcow2"
    _make(base, "qcow2")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)],
        check=True,
    )
    point = run_backup(ctx, "vm", [DiskSpec("os", str(overlay), format="qcow2")])
    assert point["disks"][0]["format_from"] == "declared"
    raw = tmp_path / "overlay.raw"
    run_restore(ctx, point["id"], str(raw))
    assert _compare(overlay, "qcow2", raw, "raw").returncode == 0


def test_formats_without_a_header_where_qemu_img_looks(tmp_path: Path, ctx: Context) -> None:
    # A fixed VHD keeps its footer at the end: qemu-img reports raw, so a declared vpc is
    # left to QEMU, which reads it; undeclared, it is read as the raw file it looks like.
    image = tmp_path / "fixed.vhd"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(image), "8M"],
        check=True,
    )
    subprocess.run(
        ["qemu-io", "-f", "vpc", "-c", "write -P 0x61 1M 64k", str(image)],
        check=True,
        capture_output=True,
    )
    point = run_backup(ctx, "vm", [DiskSpec("os", str(image), format="vpc")])
    assert (point["disks"][0]["format"], point["disks"][0]["format_from"]) == ("vpc", "declared")
    raw = tmp_path / "fixed.raw"
    run_restore(ctx, point["id"], str(raw))
    assert _compare(image, "vpc", raw, "raw").returncode == 0


def test_an_image_format_vmvault_does_not_read_is_refused(tmp_path: Path, ctx: Context) -> None:
    image = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(image), "8M"], check=True)
    with pytest.raises(ImageFormatRefused, match="is a vmdk image, which vmvault does not read"):
        run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    with pytest.raises(FormatMismatch, match="is a vmdk image, not raw"):
        run_backup(ctx, "vm", [DiskSpec("os", str(image), format="raw")])
    point = run_backup(ctx, "vm", [DiskSpec("os", str(image), format="raw", force_format=True)])
    assert point["disks"][0]["format_from"] == "forced"
