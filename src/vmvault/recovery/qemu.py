"""A booted VM's QEMU process: started in the background, reached over QMP, ended.

QEMU runs in a session of its own (no terminal signal reaches it, it outlives the command
that started it), its stderr in the state folder's ``qemu.log``. A drill's QEMU instead dies
with the process that started it (``die_with_parent``), so that a drill killed half-way
leaves no VM behind, and with it no export (exports end with their owner process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from vmvault.errors import VmvaultError
from vmvault.export.state import process_start
from vmvault.recovery.machine import VmPaths
from vmvault.snapshot.qmp_client import QmpConnection, QmpError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class QemuFailed(VmvaultError):
    code = "qemu_failed"


def start_qemu(argv: list[str], paths: VmPaths, *, die_with_parent: bool = False) -> int:
    """Start QEMU (paused: the command line has ``-S``), wait for its QMP socket, resume
    it; its pid. A QEMU that exits or does not answer is ended and reported in one line
    (the last line of its log)."""
    paths.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if die_with_parent:
        # util-linux's setpriv sets the parent-death signal and execs QEMU: the same
        # process, without a preexec_fn (unsafe in a threaded worker, where drills run).
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
    with open(paths.log, "ab") as log:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as exc:
            raise QemuFailed(f"cannot run {argv[0]}: {exc.strerror}") from None
    try:
        with _connect(paths.qmp, process) as qmp:
            qmp.execute("cont")
    except BaseException:
        stop_qemu(process.pid, process_start(process.pid), paths.qmp)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT)
        raise
    return process.pid


def _connect(socket: Path, process: subprocess.Popen[bytes]) -> QmpConnection:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise QemuFailed(f"QEMU exited: {last_line(socket.with_name('qemu.log'))}")
        if socket.exists():
            with contextlib.suppress(QmpError):
                return QmpConnection(str(socket), timeout=START_TIMEOUT)
        if time.monotonic() > deadline:
            raise QemuFailed(f"QEMU did not open its QMP socket within {START_TIMEOUT:.0f} s")
        time.sleep(0.02)


def last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [line for line in lines if line]
    return lines[-1] if lines else "no message"


def running(pid: int, start: int | None) -> bool:
    """Whether the QEMU started as ``pid`` at ``start`` still runs (not a later process
    that took its pid)."""
    return start is not None and process_start(pid) == start


def stop_qemu(pid: int, start: int | None, qmp: Path) -> None:
    """End a VM: QMP ``quit`` (QEMU closes its images cleanly), then SIGTERM, then SIGKILL,
    each given ``STOP_TIMEOUT``."""
    steps: list[Callable[[], None]] = [
        lambda: _quit(qmp),
        lambda: os.kill(pid, signal.SIGTERM),
        lambda: os.kill(pid, signal.SIGKILL),
    ]
    for step in steps:
        if not running(pid, start):
            return
        with contextlib.suppress(OSError, QmpError):
            step()
        deadline = time.monotonic() + STOP_TIMEOUT
        while running(pid, start) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
    if running(pid, start):
        raise QemuFailed(f"QEMU (pid {pid}) does not stop")


def _quit(qmp: Path) -> None:
    with QmpConnection(str(qmp), timeout=STOP_TIMEOUT) as conn:
        conn.execute("quit")


def _reap(pid: int) -> None:
    """Collect our own child's exit status, so that it does not stay a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
