"""Freezing file systems around the snapshot, so that what it captures is consistent.

`fsfreeze --freeze` flushes a file system's dirty data and blocks new writes until
`--unfreeze`; a snapshot taken in between is file-system consistent. A freeze that is
never undone hangs every writer on the machine, so `FsFreezer.thaw` keeps going when one
mount point fails, thaws in reverse order, and a failed `freeze` undoes its own partial work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from vmvault.consistency.errors import FreezeError

FREEZE_FAILED = "FsFreezeFailed"
THAW_FAILED = "FsThawFailed"
_COMMAND_TIMEOUT = 60.0


@runtime_checkable
class Freezer(Protocol):
    """Something that can hold a VM's file systems still while its disks are snapshotted.

    ``freeze`` raises `FreezeError` if it cannot freeze (and leaves nothing frozen); it
    may return a note on how it froze, which the recorded consistency reason then carries;
    ``thaw`` undoes what ``freeze`` did, is safe to call twice, and raises `FreezeError`
    (code ``FsThawFailed``) only after having tried every file system.
    """

    def freeze(self) -> str | None: ...

    def thaw(self) -> None: ...

    def describe(self) -> str: ...


class NoFreezer:
    """Nothing to freeze: the recovery point cannot be file-system consistent from this."""

    def freeze(self) -> None:
        """Do nothing."""

    def thaw(self) -> None:
        """Do nothing."""

    def describe(self) -> str:
        return "no file-system freeze"


class FsFreezer:
    """Freeze Linux mount points with util-linux ``fsfreeze``, in order; thaw in reverse.

    Each path must be a mount point: ``fsfreeze`` on a plain directory freezes the file
    system that holds it, which could be the root file system of the machine running
    the backup. ``/`` itself is refused for the same reason (our own writes would hang).
    """

    def __init__(self, mountpoints: Sequence[str | os.PathLike[str]]) -> None:
        paths = list(dict.fromkeys(os.path.abspath(os.fspath(m)) for m in mountpoints))
        if not paths:
            raise ValueError("FsFreezer needs at least one mount point (use NoFreezer)")
        self.mountpoints = paths
        self._frozen: list[str] = []

    def describe(self) -> str:
        return "fsfreeze of " + ", ".join(self.mountpoints)

    def freeze(self) -> None:
        """Freeze every mount point; on the first failure thaw the ones already frozen."""
        if self._frozen:
            raise FreezeError(f"already frozen: {', '.join(self._frozen)}")
        for path in self.mountpoints:
            try:
                if path == "/":
                    raise FreezeError("refusing to freeze / (the backup itself writes there)")
                if not os.path.ismount(path):
                    raise FreezeError(f"{path} is not a mount point")
                _fsfreeze("--freeze", path)
            except FreezeError as exc:
                message = f"cannot freeze {path}: {exc.message}"
                try:
                    self.thaw()
                except FreezeError as undo:
                    message += f"; and then {undo.message}"
                raise FreezeError(message) from None
            self._frozen.append(path)

    def thaw(self) -> None:
        """Thaw what this freezer froze, last first, trying all even if some fail.

        The ones that failed stay recorded, so calling ``thaw`` again retries them.
        """
        errors = []
        still_frozen: list[str] = []
        for path in reversed(self._frozen):
            try:
                _fsfreeze("--unfreeze", path)
            except FreezeError as exc:
                errors.append(f"{path}: {exc.message}")
                still_frozen.insert(0, path)
        self._frozen = still_frozen  # a later thaw() tries these again
        if errors:
            raise FreezeError("cannot thaw " + "; ".join(errors), code=THAW_FAILED)


def _fsfreeze(action: str, path: str) -> None:
    """Run ``fsfreeze ACTION PATH``; raise `FreezeError` with its message if it fails."""
    exe = shutil.which("fsfreeze") or shutil.which("fsfreeze", path="/usr/sbin:/sbin")
    if exe is None:
        raise FreezeError("fsfreeze not found (install util-linux)")
    try:
        done = subprocess.run(
            [exe, action, path],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FreezeError(f"fsfreeze {action} timed out after {_COMMAND_TIMEOUT:g} s") from None
    except OSError as exc:
        raise FreezeError(f"cannot run fsfreeze: {exc.strerror}") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise FreezeError(detail[0])
