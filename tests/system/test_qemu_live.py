"""Live backups of a running QEMU through QMP: real QEMU, real bitmaps, the real engine.

The "VM" is ``qemu-system-x86_64 -machine none``: no guest, only block nodes. The guest's
writes are ``qemu-io`` commands sent over a second QMP monitor (a monitor serves one client
at a time, and the first one belongs to the provider under test).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from vmvault.app.context import Context
from vmvault.app.restore import run_restore
from vmvault.app.vm_backup import run_vm_backup
from vmvault.disks.qemu import fuse_export
from vmvault.disks.source import RawDisk
from vmvault.engine.backup import DiskInput, DiskStats, backup
from vmvault.engine.restore import restore_disk
from vmvault.snapshot.base import SnapshotError
from vmvault.snapshot.qemu_live import QemuLiveSnapshot
from vmvault.snapshot.qmp_client import QmpConnection, QmpError

pytestmark = pytest.mark.qemu

MiB = 1 << 20
KiB = 1 << 10
DISK_SIZE = 64 * MiB


def _qemu_io_offline(image: Path, *commands: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    subprocess.run([*argv, str(image)], check=True, capture_output=True)


class Vm:
    """A QEMU process with qcow2 disks: ``disk0`` as -blockdev nodes, ``disk1`` as -drive."""

    def __init__(self, images: list[Path]) -> None:
        self.images = images
        # Unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
        self.sockdir = Path(tempfile.mkdtemp(prefix="vmq-"))
        self.qmp_socket = str(self.sockdir / "provider.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.control: QmpConnection | None = None

    @property
    def targets(self) -> list[str]:
        """The names ``qemu-io`` and bitmaps use: a node name, then a drive id."""
        return ["disk0", "drive1"][: len(self.images)]

    def start(self) -> None:
        argv = [
            "qemu-system-x86_64",
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "none",
            "-qmp",
            f"unix:{self.qmp_socket},server=on,wait=off",
            "-qmp",
            f"unix:{self.sockdir / 'control.sock'},server=on,wait=off",
            "-blockdev",
            f"driver=file,filename={self.images[0]},node-name=f0",
            "-blockdev",
            "driver=qcow2,file=f0,node-name=disk0",
        ]
        if len(self.images) > 1:
            argv += ["-drive", f"file={self.images[1]},format=qcow2,if=none,id=drive1"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.control = QmpConnection(str(self.sockdir / "control.sock"), timeout=10)
                break
            except QmpError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.control.execute("cont")  # a running VM, as in production

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        assert self.control is not None
        return self.control.execute(command, arguments)

    def write(self, disk: int, command: str) -> None:
        """A guest write: ``qemu-io`` on the disk's node, e.g. ``write -P 0x33 1M 64k``."""
        out = self.qmp(
            "human-monitor-command", {"command-line": f'qemu-io {self.targets[disk]} "{command}"'}
        )
        assert out == "", out  # qemu-io reports success on QEMU's stdout, errors here

    def node(self, disk: int) -> dict[str, Any]:
        name = self.targets[disk]
        for device in self.qmp("query-block"):
            if device["device"] == name:
                name = device["inserted"]["node-name"]
        [node] = [n for n in self.qmp("query-named-block-nodes") if n["node-name"] == name]
        return dict(node)

    def bitmaps(self, disk: int) -> dict[str, dict[str, Any]]:
        return {b["name"]: b for b in self.node(disk).get("dirty-bitmaps", [])}

    def quit(self) -> None:
        """A clean shutdown: QEMU saves persistent bitmaps into the images."""
        assert self.proc is not None
        self.qmp("quit")
        self.proc.wait(timeout=10)
        self._closed()

    def kill(self) -> None:
        """A crash: nothing is saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._closed()

    def _closed(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        self.proc = None


@pytest.fixture
def make_vm(tmp_path: Path) -> Iterator[Any]:
    """Start VMs with 64 MiB qcow2 disks holding some data; killed at teardown, always."""
    vms: list[Vm] = []

    def make(disks: int = 2) -> Vm:
        images = []
        for i in range(disks):
            image = tmp_path / f"disk{i}.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(DISK_SIZE)], check=True
            )
            _qemu_io_offline(
                image, f"write -P 0x1{i} 0 8M", f"write -P 0x2{i} 20M 4M", f"write -P 0x3{i} 60M 1M"
            )
            images.append(image)
        vm = Vm(images)
        vms.append(vm)
        vm.start()
        return vm

    yield make
    for vm in vms:
        vm.kill()
        shutil.rmtree(vm.sockdir, ignore_errors=True)


def _backup(
    ctx: Context, vm: Vm, provider: QemuLiveSnapshot
) -> tuple[dict[str, Any], dict[str, DiskStats], list[Any]]:
    """The way the service would do it: take, read the targets with the hints, commit."""
    vault = ctx.open_vault()
    images = provider.take([str(p) for p in vm.images])
    try:
        changed = provider.changed()
        # The provider holds the monitor only while QEMU works: others may use it now.
        with QmpConnection(vm.qmp_socket, timeout=5) as other:
            assert other.execute("query-status")["running"]
        with ExitStack() as stack:
            inputs = []
            for i, (image, fmt) in enumerate(zip(images, provider.formats(), strict=True)):
                path = stack.enter_context(fuse_export(image, fmt))
                source = stack.enter_context(RawDisk.open(path))
                inputs.append(DiskInput(f"d{i}", source, format="qcow2", changed=changed[i]))
            result = backup(
                vault,
                "live",
                inputs,
                workers=2,
                meta={"generation": provider.generation(), "notes": provider.notes()},
            )
        provider.commit()
    finally:
        provider.release()
    assert all(not Path(image).exists() for image in images)
    return result.point, result.stats, changed


def _restored_equals(ctx: Context, point: dict[str, Any], images: list[Path]) -> None:
    vault = ctx.open_vault()
    for i, image in enumerate(images):
        out = image.with_name(f"restored-{point['id']}-{i}.raw")
        restore_disk(vault, point["id"], out, disk=f"d{i}", workers=2)
        compare = subprocess.run(
            ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(out), str(image)],
            capture_output=True,
            text=True,
        )
        assert compare.returncode == 0, compare.stdout + compare.stderr
        out.unlink()


def _no_leftovers(vm: Vm, nodes_before: int) -> None:
    assert vm.qmp("query-jobs") == []
    assert len(vm.qmp("query-named-block-nodes")) == nodes_before
    assert not [
        f for s in vm.qmp("query-fdsets") for f in s["fds"] if "vmvault" in f.get("opaque", "")
    ]


def test_full_then_incremental_from_the_bitmap(ctx: Context, make_vm: Any, tmp_path: Path) -> None:
    vm: Vm = make_vm(2)
    originals = []
    for image in vm.images:  # the VM has not written yet: this is the first point's state
        copy = tmp_path / f"orig-{image.name}"
        subprocess.run(
            ["qemu-img", "convert", "-U", "-O", "qcow2", str(image), str(copy)], check=True
        )
        originals.append(copy)
    nodes_before = len(vm.qmp("query-named-block-nodes"))

    first = QemuLiveSnapshot(vm.qmp_socket, workdir=str(tmp_path))
    point1, stats1, changed1 = _backup(ctx, vm, first)
    assert changed1 == [None, None]
    assert all("full read" in note for note in first.notes())
    assert stats1["d0"].read >= 13 * MiB and stats1["d0"].skipped == 0
    g1 = first.generation()
    assert point1["meta"]["generation"] == g1
    assert [set(vm.bitmaps(i)) for i in (0, 1)] == [{f"vmvault-{g1}"}] * 2
    _no_leftovers(vm, nodes_before)

    vm.write(0, "write -P 0x44 1M 64k")  # over data
    vm.write(0, "write -P 0x45 30M 128k")  # where there was none
    vm.write(1, "write -z 2M 64k")  # the guest zeroes data: a change too
    vm.write(1, "write -P 0x46 5M 64k")

    second = QemuLiveSnapshot(vm.qmp_socket, parent_generation=g1, workdir=str(tmp_path))
    point2, stats2, changed2 = _backup(ctx, vm, second)
    assert changed2 == [
        [(1 * MiB, 1 * MiB + 64 * KiB), (30 * MiB, 30 * MiB + 128 * KiB)],
        [(2 * MiB, 2 * MiB + 64 * KiB), (5 * MiB, 5 * MiB + 64 * KiB)],
    ]
    assert second.notes()[0] == f"dirty bitmap 'vmvault-{g1}' used: 2 ranges, 192 KiB"
    assert point2["parent"] == point1["id"] and point2["type"] == "incremental"
    assert stats2["d0"].read == 192 * KiB  # only what the guest wrote is read
    assert stats2["d0"].skipped == DISK_SIZE - 192 * KiB
    assert stats2["d1"].read <= 64 * KiB  # the zeroed cluster is a hole: nothing to read
    assert stats2["d1"].skipped == DISK_SIZE - 128 * KiB
    g2 = second.generation()
    assert [set(vm.bitmaps(i)) for i in (0, 1)] == [{f"vmvault-{g2}"}] * 2  # advanced
    _no_leftovers(vm, nodes_before)

    vm.quit()  # no write since the second snapshot: the images are its state
    _restored_equals(ctx, point1, originals)
    _restored_equals(ctx, point2, vm.images)


def test_a_bitmap_is_used_only_when_it_is_the_parents_and_valid(
    make_vm: Any, tmp_path: Path
) -> None:
    vm: Vm = make_vm(1)
    path = [str(vm.images[0])]

    def snapshot(parent: str | None, *, commit: bool) -> QemuLiveSnapshot:
        provider = QemuLiveSnapshot(vm.qmp_socket, parent_generation=parent, workdir=str(tmp_path))
        try:
            provider.take(path)
            provider.changed()
            if commit:
                provider.commit()
        finally:
            provider.release()
        return provider

    a = snapshot(None, commit=True)
    assert a.notes() == ["full read (no parent generation: first backup of this disk)"]
    ga = a.generation()

    # Another point's generation: the bitmap exists but belongs to someone else.
    wrong = snapshot("20200101T000000Z-000000", commit=False)
    assert wrong.changed() == [None]
    assert "missing; found 'vmvault-" in wrong.notes()[0] and ga in wrong.notes()[0]
    assert wrong.notes()[0].endswith(": full read")
    assert set(vm.bitmaps(0)) == {f"vmvault-{ga}"}  # no commit: nothing changed

    # A clean restart keeps a persistent bitmap.
    vm.quit()
    vm.start()
    vm.write(0, "write -P 0x55 7M 64k")
    b = snapshot(ga, commit=True)
    assert b.changed() == [[(7 * MiB, 7 * MiB + 64 * KiB)]]
    gb = b.generation()

    # A crash before QEMU saved the bitmap: it is gone.
    vm.kill()
    vm.start()
    c = snapshot(gb, commit=True)
    assert c.changed() == [None]
    assert "missing — VM restarted" in c.notes()[0]

    # A crash after it was loaded from the image: QEMU marks it inconsistent.
    vm.quit()
    vm.start()
    vm.kill()
    vm.start()
    assert vm.bitmaps(0)[f"vmvault-{c.generation()}"]["inconsistent"]
    d = snapshot(c.generation(), commit=True)
    assert d.changed() == [None]
    assert "inconsistent — QEMU was not shut down cleanly" in d.notes()[0]
    assert set(vm.bitmaps(0)) == {f"vmvault-{d.generation()}"}  # the stale one removed

    with pytest.raises(SnapshotError, match="has no block node for"):
        QemuLiveSnapshot(vm.qmp_socket).take([str(tmp_path / "other.qcow2")])


def test_failed_backups_leave_tracking_as_it_was(
    ctx: Context, make_vm: Any, tmp_path: Path
) -> None:
    vm: Vm = make_vm(2)
    nodes_before = len(vm.qmp("query-named-block-nodes"))
    point1, _, _ = _backup(ctx, vm, QemuLiveSnapshot(vm.qmp_socket, workdir=str(tmp_path)))
    g1 = point1["meta"]["generation"]

    vm.write(0, "write -P 0x61 3M 2M")  # A

    # 1. The snapshot works, the transfer fails: no commit.
    failed = QemuLiveSnapshot(vm.qmp_socket, parent_generation=g1, workdir=str(tmp_path))
    with pytest.raises(RuntimeError, match="transfer failed"):
        try:
            failed.take([str(p) for p in vm.images])
            raise RuntimeError("transfer failed")
        finally:
            failed.release()
    assert [set(vm.bitmaps(i)) for i in (0, 1)] == [{f"vmvault-{g1}"}] * 2
    _no_leftovers(vm, nodes_before)

    vm.write(1, "write -P 0x62 10M 64k")  # B

    # 2. The copy itself fails: the target's file system is full.
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        full = QemuLiveSnapshot(vm.qmp_socket, parent_generation=g1, workdir=str(small))
        with pytest.raises(SnapshotError, match="No space left on device") as caught:
            full.take([str(p) for p in vm.images])
        assert "\n" not in str(caught.value)
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert [set(vm.bitmaps(i)) for i in (0, 1)] == [{f"vmvault-{g1}"}] * 2
    _no_leftovers(vm, nodes_before)

    vm.write(0, "write -P 0x63 40M 64k")  # C

    # 3. The next backup against the last committed point sees A, B and C.
    provider = QemuLiveSnapshot(vm.qmp_socket, parent_generation=g1, workdir=str(tmp_path))
    point, stats, changed = _backup(ctx, vm, provider)
    assert changed == [
        [(3 * MiB, 5 * MiB), (40 * MiB, 40 * MiB + 64 * KiB)],
        [(10 * MiB, 10 * MiB + 64 * KiB)],
    ]
    assert point["parent"] == point1["id"]
    assert stats["d0"].read == 2 * MiB + 64 * KiB
    vm.quit()
    _restored_equals(ctx, point, vm.images)


def test_vm_backup_of_a_live_qemu_vm_through_the_inventory(
    tmp_path: Path, ctx: Context, make_vm: Any
) -> None:
    """`vm backup` end to end: the inventory names the QMP socket; the second backup reads
    only what the guest wrote, and says so."""
    from vmvault.inventory import parse_inventory

    vm = make_vm(2)
    inventory = parse_inventory(
        f"""
[[vms]]
name = "live01"
state = "running"
qmp = "{vm.qmp_socket}"
  [[vms.disks]]
  name = "os"
  path = "{vm.images[0]}"
  format = "qcow2"
  role = "os"
  [[vms.disks]]
  name = "data"
  path = "{vm.images[1]}"
  format = "qcow2"
""",
        "inv.toml",
    )
    first = run_vm_backup(ctx, inventory, "live01")
    assert first["meta"]["snapshot"] == "qemu-live" and first["type"] == "full"
    assert "full read" in first["meta"]["qemu_notes"]["os"]
    vm.write(0, "write -P 0x77 2M 128k")
    second = run_vm_backup(ctx, inventory, "live01")
    stats = {d["name"]: d["stats"] for d in second["disks"]}
    assert "dirty bitmap" in second["meta"]["qemu_notes"]["os"]
    assert stats["os"]["read"] <= 256 * KiB and stats["data"]["read"] == 0
    assert stats["os"]["skipped"] >= DISK_SIZE - MiB
    assert [d["format"] for d in second["disks"]] == ["qcow2", "qcow2"]
    vm.quit()
    for name, image in (("os", vm.images[0]), ("data", vm.images[1])):
        out = tmp_path / f"restored-{name}.qcow2"
        run_restore(ctx, second["id"], str(out), disk=name, target_format="qcow2")
        compare = subprocess.run(
            ["qemu-img", "compare", str(out), str(image)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert compare.returncode == 0, compare.stdout + compare.stderr
