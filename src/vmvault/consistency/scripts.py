"""Running one pre- or post-script the way Azure's ScriptRunner does.

A script runs as root before (or after) the snapshot, so it is refused unless it is owned
by root and has mode 0700 exactly: anyone else able to change it could run code as root.
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
from dataclasses import asdict, dataclass
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
    """Refuse a script that is missing, not a file, not root's, or not mode 0700.

    Returns the failed result, or ``None`` when the script may run.
    """
    code = codes(phase)
    label = f"{phase}-script {location}"
    try:
        st = os.stat(location)
    except (FileNotFoundError, NotADirectoryError):
        return _refused(phase, code["not_found"], f"{label} not found")
    except OSError as exc:
        return _refused(phase, code["not_found"], f"{label} cannot be read: {exc.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return _refused(phase, code["not_found"], f"{label} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != 0 or mode != SCRIPT_MODE:
        return _refused(
            phase,
            code["permission"],
            f"{label} must be owned by root with mode 0700, found uid {st.st_uid}"
            f" and mode {mode:04o}",
        )
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
    refused = check_script(phase, location)
    if refused is not None:
        return refused
    code = codes(phase)
    label = f"{phase}-script {location}"
    started = time.monotonic()
    attempts = 0
    message = ""
    failure = code["failed"]
    exit_code: int | None = None
    for _ in range(1 + max(0, retries)):
        attempts += 1
        outcome, exit_code, detail = _attempt([location, *params], timeout, poll)
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
    argv: list[str], timeout: float, poll: float
) -> tuple[Literal["ok", "failed", "timeout"], int | None, str]:
    """One run: (outcome, exit code, last line of stderr or of stdout, or why it did not start)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv,
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
    """SIGTERM the process group led by ``proc``; SIGKILL what is left after ``grace`` s."""
    pgid = proc.pid  # start_new_session=True: the script leads its own group
    _signal_group(pgid, signal.SIGTERM)
    if not _wait_group(proc, grace):
        _signal_group(pgid, signal.SIGKILL)
        _wait_group(proc, 1.0)  # SIGKILL is delivered asynchronously: see it done
    proc.wait()


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
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


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
