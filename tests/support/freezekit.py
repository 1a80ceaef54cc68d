"""Probing frozen file systems from another process: a write blocks (D state) while frozen."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import vmvault

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


def sigterm_while_frozen(child_code: str, *args: str, mnt: Path) -> None:
    """Run ``child_code`` in a child Python that prints "frozen" once ``mnt`` is frozen;
    check a write blocks, SIGTERM the child, and check it died of the signal (its thaw and
    post-script handlers having run on the way out)."""
    src = str(Path(vmvault.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-c", child_code, *args], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "frozen"
        blocked(mnt)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=15) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
