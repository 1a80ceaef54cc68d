"""A guest's disk with real file systems: a GPT table and four partitions (ext4, XFS, FAT,
NTFS), each made by its own mkfs and filled with the same small tree, the way a guest
would have written it (owners, modes, times, a symlink, a sparse file, a big file).

ext4 is filled from a folder by mke2fs itself, FAT by mtools, NTFS through ntfs-3g (FUSE,
in user space), XFS through a loop mount (root). Partitions are made as separate images
and written into the disk at their offsets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
MTIME = 1577934245  # 2020-01-02 03:04:05 UTC
PARTITIONS = (("ext4", 48), ("xfs", 300), ("vfat", 40), ("ntfs", 40), ("lvm", 32))  # MiB
LV_MIB = 20  # the ext4 logical volume "root" in the LVM partition's volume group
# A logical volume's metadata, added to the group's with vgcfgrestore: lvcreate would
# activate it, which needs device-mapper (the host's kernel may not have it).
LV_TEMPLATE = """
\tlogical_volumes {
\t\troot {
\t\t\tid = "vmvtst-lvol-root-0000-0000-0000-000000"
\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]
\t\t\tsegment_count = 1
\t\t\tsegment1 {
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = %d
\t\t\t\ttype = "striped"
\t\t\t\tstripe_count = 1
\t\t\t\tstripes = ["pv0", 0]
\t\t\t}
\t\t}
\t}
"""
BIG_FILE_BYTES = 6 * MiB


@dataclass
class GuestDisk:
    path: Path
    tree: Path  # what every partition holds
    big: bytes  # data/big's contents


def tools_missing() -> list[str]:
    needed = ("mkfs.ext4", "mkfs.xfs", "mkfs.vfat", "mcopy", "mkntfs", "ntfs-3g", "sfdisk")
    needed += ("pvcreate", "vgcfgrestore", "losetup")
    return [t for t in needed if shutil.which(t) is None]


def make_tree(root: Path, seed: int = 7) -> bytes:
    """The files every partition gets."""
    (root / "etc").mkdir(parents=True)
    (root / "data" / "deep" / "er").mkdir(parents=True)
    hostname = root / "etc" / "hostname"
    hostname.write_text("guest-one\n")
    os.chmod(hostname, 0o640)
    os.chown(hostname, 1234, 99)
    (root / "etc" / "motd").write_text("welcome\n" * 100)
    (root / "data" / "deep" / "er" / "note.txt").write_text("down here\n")
    big = (bytes(range(256)) * (BIG_FILE_BYTES // 256))[:BIG_FILE_BYTES]
    big = bytes(b ^ (i * seed & 0xFF) for i, b in enumerate(big[:4096])) + big[4096:]
    (root / "data" / "big").write_bytes(big)
    with open(root / "data" / "sparse", "wb") as f:
        f.seek(8 * MiB)
        f.write(b"the end\n")
    os.symlink("../etc/hostname", root / "data" / "link")
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))
    return big


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def _fill_through_mount(image: Path, tree: Path, mount: list[str], work: Path) -> None:
    target = work / f"mnt-{image.stem}"
    target.mkdir()
    _run(*mount, image, target)
    try:
        # cp -a keeps owners, modes, times and symlinks where the file system can
        _run("cp", "-a", f"{tree}/.", target)
    finally:
        _run("umount", target)


def _make_volume_group(image: Path, tree: Path, work: Path) -> None:
    """A physical volume on ``image`` whose group (named after this process, so parallel
    runs differ) holds one logical volume with an ext4 file system."""
    group = f"vmvtst{os.getpid()}"
    env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        for cmd in (["pvcreate", "-q", loop], ["vgcreate", "-q", "-s", "1m", group, loop]):
            subprocess.run(cmd, check=True, capture_output=True, env=env)
        backup = work / "vg.conf"
        subprocess.run(
            ["vgcfgbackup", "-q", "-f", str(backup), group],
            check=True,
            capture_output=True,
            env=env,
        )
        text = backup.read_text()
        end = text.rindex("}")
        backup.write_text(text[:end] + LV_TEMPLATE % LV_MIB + text[end:])
        subprocess.run(
            ["vgcfgrestore", "-q", "-f", str(backup), group],
            check=True,
            capture_output=True,
            env=env,
        )
        pe_start = subprocess.run(
            ["pvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "pe_start", loop],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.strip()
    finally:  # detached, not removed: vgremove would wipe the metadata the disk keeps
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    volume = work / "lv.img"
    with open(volume, "wb") as f:
        f.truncate(LV_MIB * MiB)
    _run("mkfs.ext4", "-q", "-F", "-L", "lvroot", "-d", tree, volume)
    _run(
        "dd", f"if={volume}", f"of={image}", "bs=1M", f"seek={int(pe_start) // MiB}", "conv=notrunc"
    )
    volume.unlink()


def build_guest_disk(work: Path) -> GuestDisk:
    tree = work / "tree"
    big = make_tree(tree)
    images = []
    for fs, size in PARTITIONS:
        image = work / f"{fs}.img"
        with open(image, "wb") as f:
            f.truncate(size * MiB)
        if fs == "ext4":
            _run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", tree, image)
        elif fs == "xfs":
            _run("mkfs.xfs", "-q", "-f", "-L", "data", image)
            _fill_through_mount(image, tree, ["mount", "-o", "loop"], work)
        elif fs == "vfat":
            _run("mkfs.vfat", "-n", "BOOT", image)
            for top in ("etc", "data"):
                _run("mcopy", "-m", "-s", "-i", image, tree / top, "::/")
        elif fs == "ntfs":
            _run("mkntfs", "-q", "-F", "-f", "-L", "win", image)
            _fill_through_mount(image, tree, ["ntfs-3g"], work)
        else:
            _make_volume_group(image, tree, work)
        images.append((image, size))
    disk = work / "guest.raw"
    total = 1 + sum(size for _, size in PARTITIONS) + 1
    with open(disk, "wb") as f:
        f.truncate(total * MiB)
    layout = "label: gpt\n" + "".join(f"size={size}MiB\n" for _, size in PARTITIONS)
    subprocess.run(["sfdisk", "-q", str(disk)], input=layout.encode(), check=True)
    offset = 1 * MiB
    for image, size in images:
        _run(
            "dd",
            f"if={image}",
            f"of={disk}",
            "bs=1M",
            f"seek={offset // MiB}",
            "conv=notrunc,sparse",
        )
        offset += size * MiB
        image.unlink()
    return GuestDisk(disk, tree, big)
