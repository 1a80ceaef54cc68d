"""Running one pre- or post-script the way Azure's ScriptRunner does.

A script runs as root before (or after) the snapshot, so it is refused unless it is owned
by root and has mode 0700 exactly, and every folder above it is root's and writable by no
one else: anyone able to change or swap it could run code as root. The check is made on
the opened file before every attempt, and the opened file is what runs.
It runs without a shell (its params are passed as they are), in a session and process
group of its own, so that on timeout the whole tree it started can be killed, not only
its first process. Its output goes to temporary files rather than pipes: a background
child that keeps a pipe open cannot then block us, and a chatty script cannot fill one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import IO, Any, Literal

from vmvault.consistency.config import ScriptConfig

Phase = Literal["pre", "post"]

SCRIPT_MODE = 0o700
KILL_GRACE_SECONDS = 2.0
_TAIL_BYTES = 4096
_MAX_LINE = 200


@dataclass(frozen=True)
class ScriptResult:
    """What happened to one configured script, over all its attempts.

    ``code`` is ``"ok"`` on success, otherwise Azure's code (``Pre-ScriptTimeout``...).
    ``exit_code`` is the last attempt's exit status, ``None`` if the script did not run
    or was killed on timeout. ``message`` is one line for people (path, cause, stderr).
    """

    ok: bool
    code: str
    message: str
    attempts: int
    seconds: float
    exit_code: int | None
    phase: Phase = "pre"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for job logs and API answers."""
        return asdict(self)


def codes(phase: Phase) -> dict[str, str]:
    """Azure's error codes for a phase: ``not_found``, ``permission``, ``timeout``, ``failed``."""
    p = "Pre" if phase == "pre" else "Post"
    return {
        "not_found": f"{p}-ScriptNotFound",
        "permission": f"InsufficientPermissionfor{p}-Script",
        "timeout": f"{p}-ScriptTimeout",
        "failed": f"{p}-ScriptExecutionFailed",
    }


def check_script(phase: Phase, location: str) -> ScriptResult | None:
    """Refuse a script that is missing, not a file, not root's, not mode 0700, or that
    sits in a folder someone else could change. Returns the failed result, or ``None``."""
    opened = open_script(phase, location)
    if isinstance(opened, ScriptResult):
        return opened
    os.close(opened)
    return None


def open_script(phase: Phase, location: str) -> int | ScriptResult:
    """Open the script for running, checking what is opened, not a path checked earlier.

    The real path is walked from ``/`` one component at a time (``O_NOFOLLOW``, each
    directory opened relative to its parent): every folder must belong to root (or to the
    user running vmvault) and be writable by no one else (a sticky folder like /tmp holds
    other users' files safely), and the script itself must be such a user's, mode 0700.
    Each check is made on the opened descriptor, so a file or folder swapped in between
    is either what was checked or refused. Returns the open descriptor (the caller runs
    that very file) or the refusal.
    """
    code = codes(phase)
    label = f"{phase}-script {location}"
    trusted = {0, os.geteuid()}
    real = os.path.realpath(location)
    parts = [p for p in real.split("/") if p]
    if not parts:
        return _refused(phase, code["not_found"], f"{label} is not a regular file")
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        where = "/"
        for name in parts[:-1]:
            problem = _unsafe_folder(os.fstat(fd), trusted)
            if problem:
                return _refused(phase, code["permission"], f"{label}: folder {where} {problem}")
            try:
                child = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except (FileNotFoundError, NotADirectoryError):
                return _refused(phase, code["not_found"], f"{label} not found")
            except OSError as exc:  # ELOOP: a symlink appeared since the path was resolved
                return _refused(phase, code["permission"], f"{label}: {where}{name}: {exc}")
            os.close(fd)
            fd = child
            where = f"{where}{name}/"
        problem = _unsafe_folder(os.fstat(fd), trusted)
        if problem:
            return _refused(phase, code["permission"], f"{label}: folder {where} {problem}")
        try:
            script = os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd
            )
        except FileNotFoundError:
            return _refused(phase, code["not_found"], f"{label} not found")
        except OSError as exc:
            return _refused(phase, code["not_found"], f"{label} cannot be opened: {exc.strerror}")
    finally:
        os.close(fd)
    st = os.fstat(script)
    mode = stat.S_IMODE(st.st_mode)
    refusal = None
    if not stat.S_ISREG(st.st_mode):
        refusal = _refused(phase, code["not_found"], f"{label} is not a regular file")
    elif st.st_uid not in trusted or mode != SCRIPT_MODE:
        refusal = _refused(
            phase,
            code["permission"],
            f"{label} must be owned by root with mode 0700, found uid {st.st_uid}"
            f" and mode {mode:04o}",
        )
    if refusal is not None:
        os.close(script)
        return refusal
    return script


def _unsafe_folder(st: os.stat_result, trusted: set[int]) -> str | None:
    """Why a folder on the script's path lets someone else swap the script, or None."""
    if st.st_uid not in trusted:
        return f"belongs to uid {st.st_uid}, not root: its owner could swap the script"
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not st.st_mode & stat.S_ISVTX:
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def run_script(
    phase: Phase,
    location: str,
    params: Sequence[str] = (),
    *,
    retries: int = 0,
    timeout: float = 30.0,
    poll: float = 3.0,
) -> ScriptResult:
    """Check, then run a script up to ``1 + retries`` times until it succeeds.

    Any failed attempt (non-zero exit, cannot start, timeout) is retried; a missing or
    unsafe script is not, since trying again cannot change the answer. The script's state
    is polled every ``poll`` seconds up to ``timeout`` seconds per attempt; on timeout its
    whole process group gets SIGTERM, then SIGKILL after `KILL_GRACE_SECONDS`.
    """
    code = codes(phase)
    label = f"{phase}-script {location}"
    started = time.monotonic()
    attempts = 0
    message = ""
    failure = code["failed"]
    exit_code: int | None = None
    for _ in range(1 + max(0, retries)):
        # Checked again before every attempt, and the checked file is the one that runs:
        # nothing can be swapped in between two tries, nor between a check and its use.
        opened = open_script(phase, location)
        if isinstance(opened, ScriptResult):
            if attempts:
                return replace(
                    opened,
                    message=f"{opened.message} (before attempt {attempts + 1})",
                    attempts=attempts,
                    seconds=_since(started),
                )
            return opened
        attempts += 1
        try:
            outcome, exit_code, detail = _attempt([location, *params], opened, timeout, poll)
        finally:
            os.close(opened)
        if outcome == "ok":
            tries = f" on attempt {attempts}" if attempts > 1 else ""
            return ScriptResult(
                True, "ok", f"{label} succeeded{tries}", attempts, _since(started), 0, phase
            )
        if outcome == "timeout":
            failure = code["timeout"]
            message = f"{label} timed out after {timeout:g} s and was killed"
        elif exit_code is None:
            failure = code["failed"]
            message = f"{label} could not be started: {detail}"
        else:
            failure = code["failed"]
            message = f"{label} failed with exit code {exit_code}"
            if detail:
                message += f": {detail}"
    if attempts > 1:
        message += f" ({attempts} attempts)"
    return ScriptResult(False, failure, message, attempts, _since(started), exit_code, phase)


def run_phase(config: ScriptConfig | None, phase: Phase) -> ScriptResult | None:
    """Run the config's pre- or post-script; ``None`` when that script is not configured."""
    if config is None:
        return None
    if phase == "pre":
        location, params = config.pre_script_location, config.pre_script_params
        retries = config.pre_script_no_of_retries
    else:
        location, params = config.post_script_location, config.post_script_params
        retries = config.post_script_no_of_retries
    if location is None:
        return None
    return run_script(
        phase,
        location,
        params,
        retries=retries,
        timeout=config.timeout_in_seconds,
        poll=config.scripts_execution_poll_time_seconds,
    )


def _refused(phase: Phase, code: str, message: str) -> ScriptResult:
    return ScriptResult(False, code, message, 0, 0.0, None, phase)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _attempt(
    argv: list[str], script: int, timeout: float, poll: float
) -> tuple[Literal["ok", "failed", "timeout"], int | None, str]:
    """One run of the opened ``script`` (argv[0] is its name for the script's ``$0``):
    (outcome, exit code, last line of stderr or of stdout, or why it did not start)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv,
                # The descriptor that was checked: /proc/self/fd/N in the child is that very
                # file (an interpreter named by "#!" reads it through the same path).
                executable=f"/proc/self/fd/{script}",
                pass_fds=(script,),
                # $0 is /proc/self/fd/N then: the script's own path is given here.
                env={**os.environ, "VMVAULT_SCRIPT": argv[0]},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            return "failed", None, exc.strerror or str(exc)
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    kill_group(proc)
                    return "timeout", None, ""
                try:
                    rc = proc.wait(timeout=min(poll, remaining))
                    break
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:
            # Interrupted (SIGINT, SIGTERM turned into SystemExit...): leave nothing behind.
            kill_group(proc)
            raise
        if rc == 0:
            return "ok", 0, ""
        return "failed", rc, _last_line(err) or _last_line(out)


def kill_group(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the process group led by ``proc`` and every descendant of the script (one
    that left the group with setsid too); SIGKILL what is left after ``grace`` s."""
    pgid = proc.pid  # start_new_session=True: the script leads its own group
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
    """Every living process below ``pid`` in the process tree."""
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


def _last_line(fh: IO[bytes]) -> str:
    """The last non-empty line written to ``fh``, cut to a readable length."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - _TAIL_BYTES))
    lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 3] + "..."
