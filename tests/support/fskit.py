"""Real small file systems for tests (the tests run as root): a loop-mounted image made by
any mkfs (XFS with reflink, ext4), and a tmpfs of a given size."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MiB = 1 << 20


@contextmanager
def loop_mount(tmp_path: Path, mkfs: list[str], name: str, size: int = 320 * MiB) -> Iterator[Path]:
    """A file system made by ``mkfs`` on a sparse image file, mounted at ``tmp_path/name``."""
    image = tmp_path / f"{name}.fs"
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    mountpoint = tmp_path / name
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@contextmanager
def reflink_xfs(tmp_path: Path) -> Iterator[Path]:
    """An XFS file system that makes reflink clones."""
    with loop_mount(tmp_path, ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], "xfs") as mountpoint:
        yield mountpoint


@contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"48m"``) mounted at ``mountpoint`` (made if missing)."""
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], check=True
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
