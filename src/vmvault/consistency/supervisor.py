"""The supervisor of one pre- or post-script, and the ending of a script's process tree.

``scripts`` runs this file as a process of its own, ``python -I -S supervisor.py`` (no
site, no PYTHON* variables, nothing from the current folder): it reads its order on stdin,
makes itself the child subreaper, runs the checked script descriptor as /proc/self/fd/N and
reports how the script ended; on SIGTERM it ends every process below it. Run that way it
cannot import vmvault, so this module uses the standard library alone.

vmvault's own process imports it too, for ``kill_group``: what ends the part of a script's
tree it can see when the supervisor itself is gone or does not answer in time.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
import subprocess
import sys
import time
from typing import Any

KILL_GRACE_SECONDS = 2.0
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def kill_group(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the process group led by ``proc`` and every descendant of it (one that left
    the group with setsid too); SIGKILL what is left after ``grace`` s."""
    pgid = proc.pid  # start_new_session=True: it leads its own group
    escaped = _descendants(proc.pid)
    _signal_group(pgid, signal.SIGTERM)
    _signal_all(escaped, signal.SIGTERM)
    if not _wait_group(proc, grace) or _alive(escaped):
        escaped |= _descendants(proc.pid)  # forked meanwhile
        _signal_group(pgid, signal.SIGKILL)
        _signal_all(escaped, signal.SIGKILL)
        _wait_group(proc, 1.0)  # SIGKILL is delivered asynchronously: see it done
    proc.wait()


_GONE = (b"Z", b"X")  # zombie or dead: ended, only not yet reaped


def _proc_table() -> dict[int, tuple[int, int, bytes]]:
    """pid -> (parent pid, process group, state) of every process, read from /proc."""
    table: dict[int, tuple[int, int, bytes]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            table[int(entry)] = (int(fields[1]), int(fields[2]), fields[0])
        except (OSError, IndexError, ValueError):
            continue
    return table


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` in the process tree (zombies included)."""
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in _proc_table().items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo += children.get(p, [])
    return found


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pids: set[int]) -> bool:
    table = _proc_table()
    return any(pid in table and table[pid][2] not in _GONE for pid in pids)


def _wait_group(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for every process of ``proc``'s group to end."""
    deadline = time.monotonic() + seconds
    while True:
        proc.poll()  # reap the leader, so that a finished group reads as gone
        if not _group_alive(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies do not count).

    Zombies matter where PID 1 does not reap orphans (some containers): ``killpg(pgid, 0)``
    still succeeds for them, so /proc is read to tell them apart.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    table = _proc_table()
    if not table:
        return True  # no /proc: trust killpg
    return any(group == pgid and state not in _GONE for _, group, state in table.values())


# ---------------------------------------------------------------------------- supervisor
# What runs in the supervisor process (this file run by `python -I -S`): standard library
# only, single-threaded, so forking there is safe, unlike in vmvault's threaded process.


class _EndRequested(Exception):
    """SIGTERM (or SIGINT) reached the supervisor: end the script and all it started."""


def _end_requested(signum: int, frame: object) -> None:
    raise _EndRequested


def _become_subreaper() -> None:
    """Make orphans below this process its children rather than init's (Linux >= 3.4).

    Where that fails, the descendants still in our tree are found all the same; only
    a daemon that double-forked away could then escape.
    """
    with contextlib.suppress(OSError, AttributeError):
        # Imported here: only the supervisor process needs it, and vmvault's own process,
        # which imports this module for kill_group, need not load ctypes (and libffi).
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _supervise() -> int:
    """Run the script described on stdin; report how it ended; on SIGTERM end its tree.

    The report (one line each, to the report descriptor): ``exec <errno>`` when the script
    could not be executed, ``exit <code>`` or ``signal <number>`` when it ended, ``ended
    <count>`` when it was stopped on request.
    """
    with open(0, "rb", closefd=False) as stdin:
        order: dict[str, Any] = marshal.loads(stdin.read())
    report: int = order["report_fd"]
    os.set_inheritable(report, False)  # the script gets only its own descriptor
    _become_subreaper()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _end_requested)
    try:
        return _run_and_report(order, report)
    except _EndRequested:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        ended = _end_descendants(float(order["grace"]))
        os.write(report, f"ended {ended}\n".encode())
        return 0


def _run_and_report(order: dict[str, Any], report: int) -> int:
    """Fork and exec the script, reap orphans handed to us meanwhile, report its end."""
    script_fd: int = order["script_fd"]
    blocked = {signal.SIGTERM, signal.SIGINT}
    # A stop request between fork and exec must not run our handler in the child.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    pid = os.fork()
    if pid == 0:
        try:
            # What subprocess's restore_signals does: Python ignores these, exec keeps that.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            # The descriptor that was checked: /proc/self/fd/N in the script is that very
            # file (an interpreter named by "#!" reads it through the same path).
            os.execve(f"/proc/self/fd/{script_fd}", order["argv"], order["env"])
        except OSError as exc:
            os.write(report, f"exec {exc.errno}\n".encode())
        finally:
            os._exit(127)
    signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    while True:
        # Reaps the orphans handed to us while the script runs, until the script ends.
        child, status = os.waitpid(-1, 0)
        if child == pid:
            break
    if os.WIFSIGNALED(status):
        os.write(report, f"signal {os.WTERMSIG(status)}\n".encode())
    else:
        os.write(report, f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
    return 0


def _end_descendants(grace: float) -> int:
    """SIGTERM every process below us, SIGKILL what is left after ``grace`` s; reap all.

    Being the subreaper, every descendant ends up our child once its parents are gone,
    so "no child left" means nothing the script started still runs. Returns how many
    processes were reaped.
    """
    me = os.getpid()
    reaped = 0
    _signal_all(_descendants(me), signal.SIGTERM)
    deadline = time.monotonic() + grace
    hard_stop = deadline + 5.0  # a fork bomb racing SIGKILL: give up at some point
    while time.monotonic() < hard_stop:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                reaped += 1
        except ChildProcessError:
            return reaped
        if time.monotonic() >= deadline:
            _signal_all(_descendants(me), signal.SIGKILL)
        time.sleep(0.02)
    return reaped


if __name__ == "__main__":
    sys.exit(_supervise())
