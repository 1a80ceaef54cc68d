"""A tiny guest that boots from its own disk: instant recovery and restore drills boot it.

The disk is an ext4 file system (made with ``mkfs.ext4 -d``, no mount needed) holding a
static busybox, an ``/init`` and a marker file. QEMU boots Debian's kernel (the one
tests/support/dmvm.py fetches) with an initramfs that loads virtio-blk and ext4, mounts
``/dev/vda`` and switches to it; the disk's ``/init`` then prints the marker on the serial
console, writes a line into ``/boots.log`` (so the guest writes to its disk), and prints a
tick every second, so a test can see it still runs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from support import dmvm

MODULES = ("virtio_pci", "virtio_blk", "ext4")
APPEND = "console=ttyS0 panic=-1 quiet"
BOOTED = "guest: booted from its disk"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read m; do insmod /mods/$m 2>/dev/null; done < /mods/order
for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
mkdir -p /root
mount -t ext4 /dev/vda /root || { echo "initramfs: no root disk"; poweroff -f; }
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /init
"""

DISK_INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "{BOOTED}"
echo "marker: $(/bin/busybox cat /marker)"
/bin/busybox date >> /boots.log
/bin/busybox sync
n=0
while true; do
    n=$((n + 1))
    echo "guest: tick $n"
    /bin/busybox sleep 1
done
"""


def assets() -> tuple[Path, Path]:
    """The kernel and the initramfs that boots from ``/dev/vda``, built once."""
    return dmvm.build_assets(INIT, MODULES)


def make_disk(path: Path, marker: str, size_mb: int = 32) -> Path:
    """A raw ext4 disk the guest boots from, ``marker`` in its ``/marker``."""
    if shutil.which("mkfs.ext4") is None:
        raise dmvm.Unavailable("mkfs.ext4 not found")
    tree = path.with_name(path.name + ".tree")
    for folder in ("bin", "proc", "dev"):
        (tree / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy2(shutil.which("busybox") or "busybox", tree / "bin" / "busybox")
    (tree / "init").write_text(DISK_INIT)
    (tree / "init").chmod(0o755)
    (tree / "marker").write_text(marker + "\n")
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path), f"{size_mb}M"],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)
    return path
