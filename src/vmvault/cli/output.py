"""Rendering for the CLI: progress bars, tables, JSON, and the one-line error contract."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vmvault.engine.progress import ProgressCallback, ProgressEvent, no_progress
from vmvault.errors import VmvaultError
from vmvault.units import human_bytes

__all__ = ["human_bytes"]  # the CLI's commands take it from here

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def fail(exc: VmvaultError, as_json: bool) -> NoReturn:
    if as_json:
        emit_json({"error": {"code": exc.code, "message": exc.message}})
    else:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def guarded(as_json: bool, action: Callable[[], T]) -> T:
    """Run ``action``; a VmvaultError becomes one line (or one JSON document) and an exit code."""
    try:
        return action()
    except VmvaultError as exc:
        fail(exc, as_json)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None


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
