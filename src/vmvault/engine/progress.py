"""Progress events flow out of the engine; the CLI, the API and workers each render them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from vmvault.errors import VmvaultError

# Set when the process is told to stop (SIGTERM, Ctrl-C): work that waits (a throttled
# read, a pool's turn) gives up within a fraction of a second, so locks are released.
SHUTDOWN = threading.Event()


class Interrupted(VmvaultError):
    """The job was stopped (a signal, a cancel) while it ran; nothing it started is kept."""

    code = "interrupted"
    transient = True
    exit_code = 130


@dataclass(frozen=True)
class ProgressEvent:
    operation: str  # "backup", "restore" or "verify"
    disk: str
    done: int  # bytes of the disk's logical size handled so far
    total: int  # the disk's logical size
    # Bytes read so far: a backup's from the disk (holes are not read), a restore's or a
    # verify's from the vault (the bytes verified: authenticated and re-hashed; holes and
    # all-zero chunks are not read). A job's rate and its "read" while it runs.
    read: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default callback: progress is not shown."""


def interrupt_check(progress: ProgressCallback) -> Callable[[], None]:
    """What a waiting engine thread calls now and then: it raises when the process is
    shutting down, or when the progress sink says the job was cancelled (a queued job's
    sink offers ``check_cancelled``)."""
    cancelled = getattr(progress, "check_cancelled", None)

    def check() -> None:
        if SHUTDOWN.is_set():
            raise Interrupted("stopped by a signal")
        if cancelled is not None:
            cancelled()

    return check
