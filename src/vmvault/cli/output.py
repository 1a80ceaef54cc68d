"""Rendering for the CLI: progress bars, tables, JSON, and the one-line error contract."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vmvault.engine.progress import (
    SHUTDOWN,
    Interrupted,
    ProgressCallback,
    ProgressEvent,
    no_progress,
)
from vmvault.errors import VmvaultError
from vmvault.units import human_bytes

__all__ = ["human_bytes"]  # the CLI's commands take it from here

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def daemon_logging() -> None:
    """The log format of the long-running commands (scheduler, worker, serve): one shape
    whichever process wrote a line, the web server's own lines included."""
    shape = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=shape)


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def show(doc: T, as_json: bool, human: Callable[[T], None]) -> None:
    """A command's answer: the document itself with ``--json``, else its human rendering."""
    if as_json:
        emit_json(doc)
    else:
        human(doc)


def report(exc: VmvaultError, as_json: bool) -> None:
    """An error as the CLI tells it: one line on stderr, or with --json the error document."""
    if as_json:
        emit_json({"error": {"code": exc.code, "message": exc.message}})
    else:
        # escaped: a message may hold brackets (a path, s3://BUCKET[/PREFIX]), not markup
        err_console.print(
            f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True
        )


def fail(exc: VmvaultError, as_json: bool) -> NoReturn:
    report(exc, as_json)
    raise typer.Exit(exc.exit_code)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM and Ctrl-C unwind alike: locks are released, partial files removed.

    ``SHUTDOWN`` is set before the unwinding starts: the main thread's unwinding waits for
    the engine's threads, which give up their waits (a throttled read) only once it is."""
    SHUTDOWN.set()
    raise KeyboardInterrupt


def guarded(as_json: bool, action: Callable[[], T]) -> T:
    """Run ``action``; a VmvaultError becomes one line (or one JSON document) and an exit code.

    SIGTERM and Ctrl-C stop it cleanly: waiting threads give up (``SHUTDOWN``), context
    managers run, and the exit code is 130."""
    stopping = (signal.SIGTERM, signal.SIGINT)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, _terminate) for signum in stopping}
    try:
        return action()
    except VmvaultError as exc:
        fail(Interrupted("interrupted by a signal") if SHUTDOWN.is_set() else exc, as_json)
    except KeyboardInterrupt:
        SHUTDOWN.set()
        fail(Interrupted("interrupted"), as_json)
    finally:  # a caller in the same process (tests, an embedding program) gets its own back
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(signum, handler)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[ProgressCallback]:
    """A rich progress bar (bytes/s and ETA) per disk, or nothing for --json and pipes."""
    if not enabled or not err_console.is_terminal:
        yield no_progress
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[tuple[str, str], Any] = {}

        def update(event: ProgressEvent) -> None:
            key = (event.operation, event.disk)
            if key not in tasks:
                tasks[key] = bar.add_task(f"{event.operation} {event.disk}", total=event.total)
            bar.update(tasks[key], completed=event.done)

        yield update
