"""The QEMU command line of a VM booted from a recovery point.

An inventory entry describes disks, not a machine, so the machine is the inventory's
``boot`` table (``inventory.BootSettings``) where there is one, else a plain default: a
``q35`` PC, 1 GiB, one CPU, KVM when ``/dev/kvm`` answers, the disks on virtio in the
point's order (the OS disk first), no network unless asked. What a user reaches the VM by
lives in its state folder: the serial console's log, a QMP socket, a guest-agent socket
and a VNC socket (``vncviewer`` or ``virt-viewer`` on the socket's path shows the screen).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from vmvault.inventory import BootSettings

KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_API_VERSION = 12  # the only one Linux has ever had


@dataclass(frozen=True)
class VmPaths:
    """Where a booted VM's QEMU keeps what a user reaches it by (short paths: a Unix
    socket's must fit in 108 bytes)."""

    folder: Path

    @property
    def qmp(self) -> Path:
        return self.folder / "qmp.sock"

    @property
    def agent(self) -> Path:
        return self.folder / "agent.sock"

    @property
    def vnc(self) -> Path:
        return self.folder / "vnc.sock"

    @property
    def console(self) -> Path:
        return self.folder / "console.log"

    @property
    def log(self) -> Path:
        return self.folder / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.folder / "qemu.pid"


@dataclass(frozen=True)
class BootDisk:
    """A disk as the booted VM sees it: ``node`` names it in QMP (``node``-overlay is
    the overlay's format node, the device is ``node`` itself)."""

    name: str
    node: str
    overlay: Path


def kvm_usable() -> bool:
    """Whether this process can open /dev/kvm and KVM answers its API version. (A
    nested setup can answer and still not run a guest well: ``accel = "tcg"`` then.)"""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def accelerator(boot: BootSettings) -> str:
    if boot.accel == "auto":
        return "kvm" if kvm_usable() else "tcg"
    return boot.accel


def qemu_command(
    boot: BootSettings,
    accel: str,
    disks: list[BootDisk],
    paths: VmPaths,
    *,
    name: str,
    network: bool,
) -> list[str]:
    """The whole command line; QEMU starts paused (``-S``) and is resumed over QMP once
    whoever started it holds what must outlive a failed start. ``accel``: kvm or tcg
    (``accelerator``)."""
    argv = [
        "qemu-system-x86_64",
        "-name", name,
        "-S",
        "-nodefaults",
        "-machine", f"{boot.machine},accel={accel}",
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", str(boot.memory_mb),
        "-smp", str(boot.cpus),
        "-display", "none",
        "-vga", "std",
        "-vnc", f"unix:{paths.vnc}",
        "-serial", f"file:{paths.console}",
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
        "-chardev", f"socket,id=agent,path={paths.agent},server=on,wait=off",
        "-device", "virtio-serial-pci",
        "-device", "virtserialport,chardev=agent,name=org.qemu.guest_agent.0",
        "-pidfile", str(paths.pidfile),
        "-no-shutdown",  # a guest powering off leaves QEMU up: --list shows it, --stop ends it
    ]  # fmt: skip
    for index, disk in enumerate(disks):
        argv += [
            "-blockdev", f"driver=file,filename={disk.overlay},node-name={disk.node}-file",
            "-blockdev", f"driver=qcow2,file={disk.node}-file,node-name={disk.node}-overlay",
            "-device", f"virtio-blk-pci,drive={disk.node}-overlay,id={disk.node}"
            + (",bootindex=1" if index == 0 else ""),
        ]  # fmt: skip
    argv += ["-nic", "user,model=virtio-net-pci"] if network else ["-nic", "none"]
    if boot.kernel:
        argv += ["-kernel", boot.kernel]
        if boot.initrd:
            argv += ["-initrd", boot.initrd]
        if boot.append:
            argv += ["-append", boot.append]
    return [*argv, *boot.qemu_args]
