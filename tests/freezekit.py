"""Probing frozen file systems from another process: a write blocks (D state) while frozen."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

writers: list[subprocess.Popen[bytes]] = []


def unfreeze(mnt: Path) -> None:
    subprocess.run(["fsfreeze", "--unfreeze", str(mnt)], capture_output=True, timeout=30)


def start_writer(mnt: Path, name: str = "probe") -> subprocess.Popen[bytes]:
    """A child process writing into mnt; on a frozen file system it blocks (in D state)."""
    proc = subprocess.Popen(["sh", "-c", f"echo x > {mnt / name}"])
    writers.append(proc)
    return proc


def reap_writers() -> None:
    """Wait for the writers started so far (once thawed they finish), then forget them."""
    for proc in writers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    writers.clear()


def writable(mnt: Path, wait: float = 3.0) -> bool:
    """Whether a write into mnt from another process completes within ``wait`` seconds."""
    proc = start_writer(mnt, "check")
    try:
        return proc.wait(timeout=wait) == 0
    except subprocess.TimeoutExpired:
        return False


def blocked(mnt: Path) -> subprocess.Popen[bytes]:
    """Start a writer and check it is still blocked after half a second."""
    proc = start_writer(mnt)
    time.sleep(0.5)
    assert proc.poll() is None, "a write went through a frozen file system"
    return proc
