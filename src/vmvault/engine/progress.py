"""Progress events flow out of the engine; the CLI, the API and workers each render them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    operation: str  # "backup", "restore" or "verify"
    disk: str
    done: int  # bytes of the disk's logical size handled so far
    total: int  # the disk's logical size


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default callback: progress is not shown."""
