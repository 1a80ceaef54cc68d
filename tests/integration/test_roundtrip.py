"""Back up and restore images of every kind; the restored image must be byte-identical."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.cli import same_content
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore
from vmvault.engine.backup import DiskInput, backup
from vmvault.engine.targets import TargetExists
from vmvault.errors import UsageError
from vmvault.vault.format import ZERO_ID

MiB = testdisk.MiB


def _write(path: Path, pieces: list[tuple[int, bytes]], size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return path


def _text(n: int) -> bytes:
    line = b"Nov 27 12:00:01 web-01 nginx[812]: GET /api/v1/items status=200 took 3ms\n"
    return (line * (n // len(line) + 1))[:n]


IMAGES: dict[str, Callable[[Path], Path]] = {
    "all-hole": lambda d: _write(d / "hole.img", [], 8 * MiB),
    "written-zeros": lambda d: _write(d / "zeros.img", [(0, bytes(6 * MiB))], 6 * MiB),
    "random": lambda d: _write(d / "random.img", [(0, os.urandom(5 * MiB))], 5 * MiB),
    "text": lambda d: _write(d / "text.img", [(0, _text(9 * MiB))], 9 * MiB),
    # not a multiple of the chunk or block size, data in the last partial chunk
    "odd-size": lambda d: _write(
        d / "odd.img", [(123, os.urandom(70000)), (5 * MiB, _text(12345))], 5 * MiB + 12345
    ),
    "tiny": lambda d: _write(d / "tiny.img", [(0, b"boot sector" * 40)], 1000),
    "empty": lambda d: _write(d / "empty.img", [], 0),
}


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_round_trip(kind: str, tmp_path: Path, ctx: Context) -> None:
    image = IMAGES[kind](tmp_path)
    point = run_backup(ctx, "vm1", [DiskSpec("d0", str(image))])
    target = tmp_path / "restored.img"
    report = run_restore(ctx, point["id"], str(target))
    assert target.stat().st_size == image.stat().st_size
    assert same_content(image, target)
    assert not report.damaged
    # zero chunks become holes: the restore allocates no more than the data needs
    nonzero = point["disks"][0]["stats"]["read"] - point["disks"][0]["stats"]["zero"]
    assert target.stat().st_blocks * 512 <= nonzero + 64 * 1024


def test_generated_disk_round_trip_is_sparse(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=40 * MiB + 4096 * 3)
    point = run_backup(ctx, "vm1", [DiskSpec("os", str(image))])
    stats = point["disks"][0]["stats"]
    assert stats["read"] <= stats["allocated"] + 64 * 1024 * 64  # holes are not read
    assert stats["stored"] < stats["new"]  # text compresses
    target = tmp_path / "out.img"
    run_restore(ctx, "latest", str(target))
    assert same_content(image, target)
    assert target.stat().st_blocks < image.stat().st_blocks  # written zeros became holes


def test_zero_blocks_cost_nothing(tmp_path: Path, ctx: Context) -> None:
    image = _write(tmp_path / "z.img", [(0, bytes(16 * MiB))], 16 * MiB)
    point = run_backup(ctx, "vm1", [DiskSpec("d", str(image))])
    vault = ctx.open_vault()
    manifest = vault.get_manifest(point["disks"][0]["manifest"])
    assert manifest.records == [ZERO_ID] * 4
    assert point["disks"][0]["stats"]["stored"] == 0
    assert len(vault.index) == 0


def test_restore_onto_existing_file_replaces_it_only_with_force(
    tmp_path: Path, ctx: Context
) -> None:
    image = _write(tmp_path / "a.img", [(MiB, os.urandom(MiB))], 4 * MiB)
    run_backup(ctx, "vm1", [DiskSpec("d", str(image))])
    target = _write(tmp_path / "t.img", [(0, os.urandom(6 * MiB))], 6 * MiB)
    before = target.read_bytes()
    with pytest.raises(TargetExists, match="--force"):
        run_restore(ctx, "latest", str(target))
    assert target.read_bytes() == before  # untouched
    run_restore(ctx, "latest", str(target), force=True)
    assert same_content(image, target)


@pytest.fixture
def loop_device() -> Iterator[Callable[[Path], Path]]:
    """Attach image files as real block devices (loop devices); detached afterwards."""
    attached: list[str] = []

    def attach(image: Path) -> Path:
        out = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        )
        attached.append(out.stdout.strip())
        return Path(attached[-1])

    yield attach
    for device in attached:
        subprocess.run(["losetup", "--detach", device], check=False)


def test_block_device_backup_and_restore(
    tmp_path: Path, ctx: Context, loop_device: Callable[[Path], Path]
) -> None:
    """Devices have no holes and keep old bytes: zeros must be read and written explicitly."""
    image = _write(tmp_path / "a.img", [(MiB, os.urandom(MiB)), (5 * MiB, _text(MiB))], 8 * MiB)
    source = loop_device(image)
    point = run_backup(ctx, "vm1", [DiskSpec("d", str(source))])
    assert point["disks"][0]["size"] == 8 * MiB
    target_file = _write(tmp_path / "dev.img", [(0, b"\xff" * 8 * MiB)], 8 * MiB)
    target = loop_device(target_file)
    run_restore(ctx, point["id"], str(target))
    assert same_content(image, target)
    small = loop_device(_write(tmp_path / "small.img", [], 4 * MiB))
    with pytest.raises(UsageError, match="holds"):
        run_restore(ctx, point["id"], str(small))


def test_device_restore_zeroes_empty_blocks_and_writes_odd_tails(
    tmp_path: Path, ctx: Context, loop_device: Callable[[Path], Path]
) -> None:
    """On a device full of old bytes: all-zero blocks are made holes by the device (a loop
    device punches its file: a thin device stays thin), aligned runs go around its page
    cache (O_DIRECT), and a disk whose size is no multiple of 4 KiB gets its last partial
    chunk through the buffered descriptor."""
    size = 16 * MiB + 1536  # a loop device's size is a multiple of 512, not of 4096
    image = _write(
        tmp_path / "odd.img",
        [(MiB, os.urandom(MiB)), (5 * MiB, _text(MiB)), (16 * MiB, os.urandom(1536))],
        size,
    )
    point = run_backup(ctx, "vm1", [DiskSpec("d", str(image))])
    target_file = _write(tmp_path / "dev.img", [(0, b"\xff" * 20 * MiB)], 20 * MiB)
    target = loop_device(target_file)
    run_restore(ctx, point["id"], str(target))
    with open(target, "rb") as device:
        restored = device.read(size)
        assert device.read(MiB) == b"\xff" * MiB  # beyond the disk: untouched
    assert restored == image.read_bytes()
    assert restored[8 * MiB : 16 * MiB] == bytes(8 * MiB)  # two blocks zeroed by the device
    # ... as holes in the loop device's file, which was full of 0xff before
    assert target_file.stat().st_blocks * 512 <= 12 * MiB


def test_several_disks_in_one_point(tmp_path: Path, ctx: Context) -> None:
    a = _write(tmp_path / "os.img", [(0, os.urandom(2 * MiB))], 3 * MiB)
    b = _write(tmp_path / "data.img", [(MiB, _text(3 * MiB))], 7 * MiB)
    vault = ctx.open_vault()
    from vmvault.disks.source import RawDisk

    with RawDisk.open(a) as da, RawDisk.open(b) as db:
        result = backup(vault, "db01", [DiskInput("os", da), DiskInput("data", db)])
    point_id = result.point["id"]
    for name, source in (("os", a), ("data", b)):
        out = tmp_path / f"r-{name}.img"
        run_restore(ctx, point_id, str(out), disk=name)
        assert same_content(source, out)
