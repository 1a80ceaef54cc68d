"""The QEMU command line of a booted point, and the inventory tables behind it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vmvault.inventory import BootSettings, DrillSettings
from vmvault.recovery.machine import BootDisk, VmPaths, qemu_command

PATHS = VmPaths(Path("/run/v/web01-r"))
DISKS = [
    BootDisk("os", "disk0", Path("/srv/i/web01-r/os.qcow2")),
    BootDisk("data", "disk1", Path("/srv/i/web01-r/data.qcow2")),
]


def _option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_default_machine_is_isolated_paused_and_boots_the_first_disk() -> None:
    argv = qemu_command(BootSettings(), "tcg", DISKS, PATHS, name="web01-r", network=False)
    assert "-S" in argv and _option(argv, "-nic") == ["none"]
    assert _option(argv, "-machine") == ["q35,accel=tcg"] and _option(argv, "-m") == ["1024"]
    assert _option(argv, "-serial") == ["file:/run/v/web01-r/console.log"]
    assert _option(argv, "-qmp") == ["unix:/run/v/web01-r/qmp.sock,server=on,wait=off"]
    devices = [d for d in _option(argv, "-device") if d.startswith("virtio-blk")]
    assert devices == [
        "virtio-blk-pci,drive=disk0-overlay,id=disk0,bootindex=1",
        "virtio-blk-pci,drive=disk1-overlay,id=disk1",
    ]
    assert "-kernel" not in argv


def test_boot_settings_shape_the_machine() -> None:
    boot = BootSettings(
        memory_mb=256,
        cpus=2,
        kernel="/boot/vmlinuz",
        initrd="/boot/initrd",
        append="console=ttyS0",
        qemu_args=["-usb"],
    )
    argv = qemu_command(boot, "kvm", DISKS[:1], PATHS, name="web01-r", network=True)
    assert _option(argv, "-cpu") == ["host"] and _option(argv, "-smp") == ["2"]
    assert _option(argv, "-nic") == ["user,model=virtio-net-pci"]
    assert _option(argv, "-kernel") == ["/boot/vmlinuz"]
    assert _option(argv, "-append") == ["console=ttyS0"] and argv[-1] == "-usb"


@pytest.mark.parametrize(
    "table",
    [{}, {"console": "login:", "guest_agent": True}, {"script": "/x", "console": "y"}],
)
def test_a_drill_waits_for_exactly_one_sign(table: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        DrillSettings.model_validate(table)
