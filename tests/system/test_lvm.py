"""LVM snapshots of logical volumes: refused clearly where a path is no LV; and, where the
kernel has device-mapper, a real volume group on a loop device backed up from a snapshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.cli import same_content
from support.paths import ROOT
from vmvault.app.context import Context
from vmvault.app.restore import run_restore
from vmvault.app.vm_backup import run_vm_backup
from vmvault.inventory import parse_inventory
from vmvault.snapshot import choose_provider
from vmvault.snapshot.base import SnapshotError
from vmvault.snapshot.lvm import LvmSnapshot

pytestmark = [pytest.mark.lvm, pytest.mark.qemu]

MiB = 1 << 20


def _kernel_has_device_mapper() -> bool:
    """Whether this kernel has device-mapper, built in or as a module that loads. Not
    whether /dev/mapper/control exists: LVM's tools make that node as root (``lvs`` in the
    first test here), on a kernel without device-mapper too."""
    if os.geteuid() != 0:
        return False
    if "device-mapper" in Path("/proc/misc").read_text():
        return True
    modprobe = shutil.which("modprobe") or "/sbin/modprobe"
    try:
        if subprocess.run([modprobe, "-q", "dm_mod"], capture_output=True).returncode != 0:
            return False
    except OSError:  # no modprobe: no module to load either
        return False
    return "device-mapper" in Path("/proc/misc").read_text()


HAS_DM = _kernel_has_device_mapper()


def test_a_file_is_not_a_logical_volume(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * MiB)
    provider = choose_provider("lvm", True, [str(image)])
    with pytest.raises(SnapshotError, match=r"lvs --noheadings failed: .*disk\.img"):
        provider.take([str(image)])
    assert isinstance(provider, LvmSnapshot) and provider.invalid() == []


def test_unknown_provider_names_lvm_among_the_known(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="lvm, qemu-live"):
        choose_provider("zfs", True, [str(tmp_path)])


# One of this test and the next runs: here where the kernel has device-mapper, else in a VM
# (the next test) whose kernel has it; LVM cannot work on a kernel without it.
@pytest.mark.skipif(
    not HAS_DM, reason="this kernel has no device-mapper: the next test runs this in a VM"
)
def test_running_vm_on_a_logical_volume_is_backed_up_from_a_snapshot(
    tmp_path: Path, ctx: Context
) -> None:
    backing = tmp_path / "pv.img"
    backing.write_bytes(b"")
    os.truncate(backing, 64 * MiB)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    vg = f"vmvault{os.getpid()}"
    try:
        subprocess.run(["pvcreate", "-q", loop], check=True, capture_output=True)
        subprocess.run(["vgcreate", "-q", vg, loop], check=True, capture_output=True)
        subprocess.run(
            ["lvcreate", "-q", "-y", "-n", "os", "-L", "24M", vg], check=True, capture_output=True
        )
        device = f"/dev/{vg}/os"
        with open(device, "r+b") as f:
            f.write(os.urandom(4 * MiB))
        inv = parse_inventory(
            f'[[vms]]\nname = "lv01"\nstate = "running"\n'
            f'[[vms.disks]]\nname = "os"\npath = "{device}"\n',
            "inv.toml",
        )
        point = run_vm_backup(ctx, inv, "lv01")
        assert point["meta"]["snapshot"] == "lvm"
        lvs = subprocess.run(
            ["lvs", "--noheadings", "-o", "lv_name", vg], capture_output=True, text=True
        )
        assert lvs.stdout.split() == ["os"]  # the snapshot volume is gone
        run_restore(ctx, "latest", str(tmp_path / "restored.img"), vm="lv01")
        assert same_content(tmp_path / "restored.img", Path(device))
    finally:
        subprocess.run(["vgremove", "-f", "-y", vg], capture_output=True)
        subprocess.run(["pvremove", "-y", loop], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)


@pytest.mark.skipif(HAS_DM, reason="device-mapper is here: the test above ran on this host")
def test_lvm_in_a_vm_whose_kernel_has_device_mapper(tmp_path: Path) -> None:
    """Where this kernel lacks device-mapper, the test above runs in a VM that has it."""
    from support import dmvm

    here = Path(__file__).resolve().relative_to(ROOT)
    # Python is slow under TCG: the inner pytest loads no plugin of the environment's
    # (schemathesis and hypothesis took most of its start-up), none of which that test uses.
    status, output = dmvm.run(
        f"""
        cd {ROOT}
        PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -q -p no:cacheprovider \\
            -rA {here} -k running_vm_on_a_logical_volume
        """,
        tmp_path / "vm",
    )
    assert status == 0, output
    assert f"PASSED {here}::test_running_vm_on_a_logical_volume" in output, output
