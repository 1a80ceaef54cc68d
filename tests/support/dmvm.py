"""A throwaway VM whose kernel has device-mapper, for the tests that need it.

Some kernels (this project's CI among them) are built without device-mapper, so LVM cannot
run on the test host itself. This boots Debian's stock kernel under QEMU (TCG) with a
busybox initramfs that mounts the host's root file system read-only over 9p and runs a
script in a chroot of it: the same Python, virtualenv, LVM tools and test files as the
host, on a kernel that has dm-mod and dm-snapshot. A second, writable 9p share carries the
script in and its output out.

The kernel package is fetched with ``apt-get download`` once and kept under ``build/``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
CACHE = ROOT / "build" / "dm-vm"
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "dm_snapshot", "loop")

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read m; do insmod /mods/$m; done < /mods/order
mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs run /host/run
mkdir -p /host/run/vmvault-work /host/run/vmvault-tmp
mount -t 9p -o trans=virtio,version=9p2000.L work /host/run/vmvault-work
chroot /host /bin/sh /run/vmvault-work/run.sh > /host/run/vmvault-work/out.txt 2>&1
echo "EXIT=$?" >> /host/run/vmvault-work/out.txt
sync
poweroff -f
"""

# No udev in the guest: device-mapper makes its own /dev nodes; LVM keeps no archives
# (the host's /etc is read-only in the guest).
GUEST_ENV = """set -e
export DM_DISABLE_UDEV=1 PYTHONDONTWRITEBYTECODE=1 PATH=/usr/sbin:/usr/bin:/sbin:/bin
# The host's tree (its /tmp too, where a checkout may live) is read-only here: scratch
# space is a tmpfs under /run.
export TMPDIR=/run/vmvault-tmp HOME=/run/vmvault-tmp LVM_SYSTEM_DIR=/run/vmvault-tmp/lvm
mkdir -p "$LVM_SYSTEM_DIR"
cat > "$LVM_SYSTEM_DIR/lvm.conf" <<'CONF'
activation {
    udev_sync = 0
    udev_rules = 0
}
backup {
    backup = 0
    archive = 0
}
CONF
"""


HOST_SHARE = "security_model=passthrough,readonly=on,multidevs=remap"


class Unavailable(Exception):
    """What the VM needs is missing here (a tool from ``make sysdeps``, or the kernel
    package from Debian's archive)."""


def _run(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=600)
    if done.returncode != 0:
        raise Unavailable(f"{' '.join(argv[:3])}: {done.stderr.strip()[-300:]}")
    return done.stdout


def _kernel_package() -> str:
    for attempt in range(2):
        try:
            out = _run("apt-cache", "depends", "linux-image-amd64")
            for line in out.splitlines():
                if line.strip().startswith("Depends: linux-image-"):
                    return line.split(":", 1)[1].strip()
        except Unavailable:
            pass
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
    raise Unavailable("no linux-image-amd64 package known to apt")


def assets() -> tuple[Path, Path]:
    """The kernel and the initramfs, built once."""
    return build_assets(INIT, MODULES)


def build_assets(init: str, modules: tuple[str, ...]) -> tuple[Path, Path]:
    """Debian's kernel and a busybox initramfs running ``init`` with ``modules`` loaded
    (and what they depend on), built once per init and module list."""
    for tool in ("qemu-system-x86_64", "busybox", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found")
    modprobe = shutil.which("modprobe") or "/sbin/modprobe"
    depmod = shutil.which("depmod") or "/sbin/depmod"
    package = _kernel_package()
    version = package.removeprefix("linux-image-")
    # A changed init or module list makes a new initramfs, not a stale one from the cache.
    recipe = hashlib.sha256((init + " ".join(modules)).encode()).hexdigest()[:12]
    base = CACHE / f"{version}-{recipe}"
    kernel, initrd = base / "vmlinuz", base / "initrd.gz"
    if kernel.exists() and initrd.exists():
        return kernel, initrd
    base.mkdir(parents=True, exist_ok=True)
    _run("apt-get", "download", "-q", package, cwd=base)
    [deb] = base.glob(f"{package}_*.deb")
    tree = base / "root"
    _run("dpkg-deb", "-x", str(deb), str(tree))
    _run(depmod, "-b", str(tree), version)
    image = base / "initrd"
    for d in ("bin", "mods", "proc", "sys", "dev", "host"):
        (image / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(shutil.which("busybox") or "busybox", image / "bin" / "busybox")
    order: list[str] = []
    for module in modules:
        out = _run(modprobe, "-d", str(tree), "-S", version, "--show-depends", module)
        for line in out.splitlines():
            path = Path(line.split()[1])
            if path.name not in order:
                order.append(path.name)
                shutil.copy2(path, image / "mods" / path.name)
    (image / "mods" / "order").write_text("\n".join(order) + "\n")
    (image / "init").write_text(init)
    (image / "init").chmod(0o755)
    files = subprocess.run(["find", "."], cwd=image, capture_output=True, check=True).stdout
    archive = subprocess.run(
        ["busybox", "cpio", "-o", "-H", "newc"], cwd=image, input=files, capture_output=True
    ).stdout
    initrd.write_bytes(subprocess.run(["gzip", "-1"], input=archive, capture_output=True).stdout)
    shutil.copy2(tree / "boot" / f"vmlinuz-{version}", kernel)
    shutil.rmtree(tree)
    deb.unlink()
    return kernel, initrd


def run(script: str, work: Path, timeout: float = 900) -> tuple[int, str]:
    """Run ``script`` (sh) as root in the VM; returns its exit status and its output."""
    kernel, initrd = assets()
    work.mkdir(parents=True, exist_ok=True)
    (work / "run.sh").write_text(GUEST_ENV + textwrap.dedent(script))
    (work / "out.txt").unlink(missing_ok=True)
    console = subprocess.run(
        [
            "qemu-system-x86_64",
            "-accel", "tcg",  # KVM may be offered without working nested virtualisation
            "-m", "1024",
            "-nographic", "-no-reboot",
            "-kernel", str(kernel),
            "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1",
            "-virtfs", f"local,path=/,mount_tag=host,{HOST_SHARE}",
            "-virtfs", f"local,path={work},mount_tag=work,security_model=passthrough",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip
    out = work / "out.txt"
    if not out.exists():
        raise AssertionError(f"the VM ran nothing: {console.stdout[-2000:]}{console.stderr[-500:]}")
    text = out.read_text()
    status = int(text.rsplit("EXIT=", 1)[1].strip()) if "EXIT=" in text else -1
    return status, text
