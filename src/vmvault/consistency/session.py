"""Quiescing a running VM around its snapshot: pre-script, freeze, snapshot, thaw, post-script.

The order and the guarantees are what matter here:

- the file systems are thawed whatever happens: the snapshot step raised, the process got
  SIGTERM while frozen (a handler thaws first, then does what SIGTERM would have done);
- the post-script (when configured) always runs, even after a failed pre-script, since
  the application may have been left half-quiesced, and even when the body raised;
- a failed pre-script with continueBackupOnFailure=false fails the backup, except on a
  single-disk VM where Azure takes a crash-consistent point instead.

SIGKILL cannot be caught; a frozen file system then stays frozen until someone runs
``fsfreeze --unfreeze`` (or, for a guest frozen through its agent, ``guest-fsfreeze-thaw``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from vmvault.consistency.config import ScriptConfig
from vmvault.consistency.errors import ConsistencyError, FreezeError
from vmvault.consistency.freeze import THAW_FAILED, Freezer, NoFreezer
from vmvault.consistency.level import (
    Consistency,
    FreezeState,
    decide_level,
    pre_failure_policy,
)
from vmvault.consistency.scripts import ScriptResult, run_phase
from vmvault.errors import VmvaultError

SIGTERM_DETAIL = "SIGTERM arrived while frozen: file systems thawed before the block ended"


@dataclass
class Quiescence:
    """What `quiesce` did. ``consistency`` is final once the ``with`` block has exited.

    Inside the block it holds the level the point will have if the post-script succeeds.
    """

    consistency: Consistency
    scripts: list[ScriptResult] = field(default_factory=list)
    freeze: FreezeState = "skipped"
    freeze_detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for job logs: the level, each script's result, the freeze state."""
        return {
            "consistency": self.consistency.to_dict(),
            "scripts": [s.to_dict() for s in self.scripts],
            "freeze": self.freeze,
            "freeze_detail": self.freeze_detail,
        }


class _FreezeHold:
    """A freezer plus what happened to it; ``thaw`` is idempotent and never raises."""

    def __init__(self, freezer: Freezer) -> None:
        self.freezer = freezer
        self.state: FreezeState = "skipped"
        self.detail = ""
        self.frozen = False
        self.thaw_error: FreezeError | None = None

    def freeze(self) -> None:
        self.frozen = True  # set first: a failed freeze may have frozen part of the set
        try:
            note = self.freezer.freeze()
        except (VmvaultError, OSError) as exc:
            self.state, self.detail = "failed", _text(exc)
            self.thaw()  # a freezer undoes its own partial work; this only makes sure
            return
        self.state, self.detail = "frozen", note or ""

    def thaw(self) -> None:
        if not self.frozen:
            return
        try:
            self.freezer.thaw()
        except (VmvaultError, OSError) as exc:
            self.thaw_error = (
                exc if isinstance(exc, FreezeError) else FreezeError(_text(exc), THAW_FAILED)
            )
            return  # stay "frozen" in our books: a second thaw() retries
        self.frozen = False
        self.thaw_error = None

    def thaw_early(self) -> None:
        """Thaw from the SIGTERM handler: the freeze no longer covers the snapshot."""
        was_frozen = self.frozen
        self.thaw()
        if was_frozen and self.state == "frozen":
            self.state, self.detail = "failed", SIGTERM_DETAIL


class _SigtermGuard:
    """While frozen, SIGTERM first thaws, then does what it would have done.

    What it would have done: call the previous Python handler, or else end the process
    with ``SystemExit(128 + SIGTERM)`` (raised, so the post-script and every ``finally``
    still run). A SIGTERM that arrives while a freeze or thaw command is running is held
    and acted on when it ends, so that the freezer's bookkeeping stays whole.
    Signal handlers exist only in the main thread; elsewhere, and when SIGTERM is ignored,
    nothing is installed (the ``finally`` of `quiesce` still thaws).
    """

    def __init__(self, thaw: Callable[[], None]) -> None:
        self._thaw = thaw
        self._previous: Any = None
        self._installed = False
        self._busy = False
        self.pending = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_IGN:
            return
        self._previous = previous
        signal.signal(signal.SIGTERM, self._handle)
        self._installed = True

    def restore(self) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGTERM, previous)
            self._installed = False

    @contextmanager
    def busy(self, deliver: bool) -> Iterator[None]:
        """Hold SIGTERM during a freeze/thaw command; act on it afterwards if ``deliver``."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
        if deliver and self.pending:
            self.deliver()

    def deliver(self) -> None:
        """Thaw, stop guarding, and do what SIGTERM would have done without us."""
        self.pending = False
        self._thaw()
        previous = self._previous
        self.restore()
        if callable(previous):
            previous(signal.SIGTERM, None)
            return
        raise SystemExit(128 + signal.SIGTERM)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True
        if not self._busy:
            self.deliver()


@contextmanager
def quiesce(
    config: ScriptConfig | None,
    freezer: Freezer,
    *,
    vm_running: bool,
    single_disk: bool = False,
) -> Iterator[Quiescence]:
    """Hold a VM consistent while the body takes its snapshot; yield a `Quiescence`.

    Raises `ConsistencyError` (with the pre-script's code) before the body runs when the
    pre-script failed, continueBackupOnFailure is false and the VM has several disks.
    Raises `FreezeError` (``FsThawFailed``) after the block if a file system could not be
    thawed, unless the body already raised (the thaw error is then added as a note).
    """
    if not vm_running:
        yield Quiescence(decide_level(vm_running=False))
        return

    continue_on_failure = config.continue_backup_on_failure if config else True
    pre = run_phase(config, "pre")
    quiescence = Quiescence(Consistency("crash", "quiescing"))
    if pre is not None:
        quiescence.scripts.append(pre)
    policy = pre_failure_policy(
        pre, continue_on_failure=continue_on_failure, single_disk=single_disk
    )

    def finish(hold: _FreezeHold | None) -> ScriptResult | None:
        post = run_phase(config, "post")
        if post is not None:
            quiescence.scripts.append(post)
        if hold is not None:
            quiescence.freeze, quiescence.freeze_detail = hold.state, hold.detail
        quiescence.consistency = decide_level(
            vm_running=True,
            pre=pre,
            post=post,
            freeze=quiescence.freeze,
            freeze_detail=quiescence.freeze_detail,
            continue_on_failure=continue_on_failure,
            single_disk=single_disk,
        )
        return post

    if policy == "abort":
        assert pre is not None
        finish(None)
        raise ConsistencyError(
            pre.code,
            f"{pre.message}; continueBackupOnFailure=false: the backup fails",
            [s.to_dict() for s in quiescence.scripts],
        )

    hold: _FreezeHold | None = None
    if policy == "crash":
        quiescence.freeze = "skipped"
    elif config is not None and not config.fs_freeze_enabled:
        quiescence.freeze = "disabled"
    elif isinstance(freezer, NoFreezer):
        quiescence.freeze = "unavailable"
    else:
        hold = _FreezeHold(freezer)
    guard = _SigtermGuard(hold.thaw_early) if hold is not None else None

    body_error: BaseException | None = None
    try:
        if hold is not None and guard is not None:
            guard.install()
            with guard.busy(deliver=True):
                hold.freeze()
            quiescence.freeze, quiescence.freeze_detail = hold.state, hold.detail
        quiescence.consistency = decide_level(
            vm_running=True,
            pre=pre,
            post=None,
            freeze=quiescence.freeze,
            freeze_detail=quiescence.freeze_detail,
            continue_on_failure=continue_on_failure,
            single_disk=single_disk,
        )
        yield quiescence
    except BaseException as exc:
        body_error = exc
        raise
    finally:
        try:
            if hold is not None and guard is not None:
                with guard.busy(deliver=False):
                    hold.thaw()
                guard.restore()
        finally:
            finish(hold)
        if guard is not None and guard.pending:
            guard.deliver()  # a SIGTERM held during the last thaw
        if hold is not None and hold.thaw_error is not None:
            if body_error is None:
                raise hold.thaw_error
            body_error.add_note(f"{hold.thaw_error.code}: {hold.thaw_error.message}")


def _text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, VmvaultError) else str(exc)
