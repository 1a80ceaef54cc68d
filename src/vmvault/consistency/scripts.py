"""Running one pre- or post-script the way Azure's ScriptRunner does.

A script runs as root before (or after) the snapshot, so it is refused unless it is owned
by root and has mode 0700 exactly, and every folder on the way to it (those holding a
symlink included) is root's and writable by no one else: anyone able to change, swap or
redirect it could run code as root. The check is made on the opened file before every
attempt, and the opened file is what runs.

It runs without a shell (its params are passed as they are) under a small supervisor: a
fresh interpreter running ``supervisor.py``, in a session of its own, that makes itself the
"child subreaper" of everything the script starts. A process that leaves the script's
group (``setsid``) or is orphaned on purpose (a double-forked daemon) is handed to the
supervisor rather than to init, so on timeout the supervisor finds and kills all of them.
Output goes to temporary files rather than pipes: a background child that keeps a pipe
open cannot then block us, and a chatty script cannot fill one.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import IO, Any, Literal

from vmvault.consistency import supervisor
from vmvault.consistency.config import ScriptConfig
from vmvault.consistency.supervisor import KILL_GRACE_SECONDS, kill_group

Phase = Literal["pre", "post"]

SCRIPT_MODE = 0o700
_TAIL_BYTES = 4096
_MAX_LINE = 200
_MAX_SYMLINKS = 40  # as the kernel's own path walk (ELOOP beyond)
# Run by its path in an interpreter of its own (-I -S), hence its standard library only.
_SUPERVISOR = os.path.abspath(supervisor.__file__)
# How long past its grace the supervisor may take to report the tree gone before we
# fall back to killing what we can see ourselves.
_SUPERVISOR_SLACK_SECONDS = 3.0


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
    sits behind a folder or symlink someone else could change. Returns the failed result,
    or ``None``."""
    opened = open_script(phase, location)
    if isinstance(opened, ScriptResult):
        return opened
    os.close(opened)
    return None


def open_script(phase: Phase, location: str) -> int | ScriptResult:
    """Open the script for running, checking what is opened, not a path checked earlier.

    The path is walked from ``/`` one component at a time, each opened relative to the
    folder before it with ``O_NOFOLLOW``; a symlink met on the way is read from its folder
    and its target walked the same way (so the folders holding links are checked too, and
    the link must be a trusted user's). Every folder walked must belong to root (or to the
    user running vmvault) and be writable by no one else (a sticky folder like /tmp holds
    other users' files safely), and the script itself must be such a user's, mode 0700.
    Each check is made on the opened descriptor or on the entry of an opened folder, so a
    file, folder or link swapped in between is either what was checked or refused.
    Returns the open descriptor (the caller runs that very file) or the refusal.
    """
    code = codes(phase)
    label = f"{phase}-script {location}"
    trusted = {0, os.geteuid()}
    path = location if location.startswith("/") else os.path.join(os.getcwd(), location)
    pending = deque(_components(path))
    # The folders from / down to the one being read, each open: ".." goes back up the
    # folders actually walked, as the kernel does after a symlink.
    folders: list[tuple[int, str]] = [
        (os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "/")
    ]
    links = 0
    script: int | None = None
    try:
        while pending:
            name = pending.popleft()
            if name == "..":
                if len(folders) > 1:
                    os.close(folders.pop()[0])
                continue
            folder, where = folders[-1]
            problem = _unsafe_folder(os.fstat(folder), trusted)
            if problem:
                return _refused(phase, code["permission"], f"{label}: folder {where} {problem}")
            try:
                entry = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return _refused(phase, code["not_found"], f"{label} not found")
            except OSError as exc:
                return _refused(phase, code["permission"], f"{label}: {where}{name}: {exc}")
            if stat.S_ISLNK(entry.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    return _refused(
                        phase, code["not_found"], f"{label}: too many levels of symbolic links"
                    )
                if entry.st_uid not in trusted:
                    # In a sticky folder the owner of a link may replace it at any time.
                    return _refused(
                        phase,
                        code["permission"],
                        f"{label}: {where}{name} is a symlink of uid {entry.st_uid}, not"
                        " root: its owner could point it at another file",
                    )
                try:
                    target = os.readlink(name, dir_fd=folder)
                except OSError as exc:  # replaced since it was looked at: by a trusted user
                    return _refused(phase, code["permission"], f"{label}: {where}{name}: {exc}")
                if target.startswith("/"):
                    while len(folders) > 1:
                        os.close(folders.pop()[0])
                pending.extendleft(reversed(_components(target)))
                continue
            if pending:  # a folder on the way
                try:
                    child = os.open(
                        name,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=folder,
                    )
                except (FileNotFoundError, NotADirectoryError):
                    return _refused(phase, code["not_found"], f"{label} not found")
                except OSError as exc:  # ELOOP: became a symlink since it was looked at
                    return _refused(phase, code["permission"], f"{label}: {where}{name}: {exc}")
                folders.append((child, f"{where}{name}/"))
                continue
            try:
                script = os.open(
                    name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder
                )
            except FileNotFoundError:
                return _refused(phase, code["not_found"], f"{label} not found")
            except OSError as exc:
                return _refused(
                    phase, code["not_found"], f"{label} cannot be opened: {exc.strerror}"
                )
    finally:
        for fd, _ in folders:
            os.close(fd)
    if script is None:  # the path ended on a folder ("/", "x/..")
        return _refused(phase, code["not_found"], f"{label} is not a regular file")
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


def _components(path: str) -> list[str]:
    """A path's names, without the empty and "." ones ("//a/./b" -> ["a", "b"])."""
    return [name for name in path.split("/") if name not in ("", ".")]


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
    is polled every ``poll`` seconds up to ``timeout`` seconds per attempt; on timeout
    everything it started gets SIGTERM, then SIGKILL after `KILL_GRACE_SECONDS`.
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
        elif outcome == "lost":
            failure = code["failed"]
            message = f"{label} was lost: the process supervising it ended with {detail}"
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
) -> tuple[Literal["ok", "failed", "timeout", "lost"], int | None, str]:
    """One run of the opened ``script`` (argv[0] is its name for the script's ``$0``):
    (outcome, exit code, last line of stderr or of stdout, or why it did not start).
    ``lost``: the supervisor was killed from outside, so how the script ended is unknown."""
    if not sys.executable:
        return "failed", None, "no Python interpreter found to supervise it"
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as order,
        tempfile.TemporaryFile() as report,
    ):
        # What the supervisor is to run, given on its stdin: the environment is passed as
        # bytes, as we have it (the supervisor's own interpreter may adjust its locale).
        marshal.dump(
            {
                "argv": [os.fsencode(arg) for arg in argv],
                # $0 is /proc/self/fd/N: the script's own path is given here.
                "env": {**os.environb, b"VMVAULT_SCRIPT": os.fsencode(argv[0])},
                "script_fd": script,
                "report_fd": report.fileno(),
                "grace": KILL_GRACE_SECONDS,
            },
            order,
        )
        order.flush()
        order.seek(0)
        try:
            proc = subprocess.Popen(
                # -I -S: no site, no PYTHON* variables, nothing from the current folder.
                [sys.executable, "-I", "-S", _SUPERVISOR],
                pass_fds=(script, report.fileno()),
                stdin=order,
                stdout=out,
                stderr=err,
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            return "failed", None, f"its supervisor: {exc.strerror or exc}"
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    stop_script(proc)
                    return "timeout", None, ""
                try:
                    proc.wait(timeout=min(poll, remaining))
                    break
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:
            # Interrupted (SIGINT, SIGTERM turned into SystemExit...): leave nothing behind.
            stop_script(proc)
            raise
        report.seek(0)
        said = dict(
            line.split(" ", 1) for line in report.read().decode().splitlines() if " " in line
        )
        if "exec" in said:
            return "failed", None, os.strerror(int(said["exec"]))
        if "exit" in said:
            rc = int(said["exit"])
        elif "signal" in said:
            rc = -int(said["signal"])  # as subprocess says it
        else:  # the supervisor itself was killed: end what is left of the script's group
            kill_group(proc)
            detail = _last_line(err)
            return "lost", None, f"status {proc.returncode}" + (f": {detail}" if detail else "")
        if rc == 0:
            return "ok", 0, ""
        return "failed", rc, _last_line(err) or _last_line(out)


def stop_script(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE_SECONDS) -> None:
    """End a running script and everything it started, then reap its supervisor.

    The supervisor, asked with SIGTERM, sends SIGTERM to every process below it and
    SIGKILL to what is left after its grace, then exits 0. Should it not manage in time,
    or end otherwise (killed before it could act), what we can see from here (the group,
    the descendants in /proc) is killed instead.
    """
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace + _SUPERVISOR_SLACK_SECONDS)
    if proc.returncode != 0:
        kill_group(proc, grace=0)


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
