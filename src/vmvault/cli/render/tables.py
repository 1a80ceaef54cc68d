"""What the CLI's tables share: a terminal's width chosen between a wide and a narrow form,
times written one way, and columns of figures that never split a number from its unit."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

# Consistency levels as a narrow table writes them.
SHORT_LEVELS = {"application": "app", "file-system": "fs"}


def compact_table(title: str | None = None, caption: str | None = None) -> Table:
    """A table as `list` and `jobs list` draw theirs: a rule under the header, one blank
    between columns and no padding, so that more of a narrow terminal goes to the cells."""
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=0)


def natural_width(table: Table) -> int:
    """The width ``table`` takes with no cell wrapped or cut: its widest cell per column,
    a blank between columns and one at each edge (``compact_table``'s layout)."""
    widths = [
        max(
            [Text.from_markup(str(column.header)).cell_len]
            + [
                max(map(cell_len, Text.from_markup(str(cell)).plain.splitlines()), default=0)
                for cell in column.cells
            ]
        )
        for column in table.columns
    ]
    return sum(widths) + len(widths) + 1


def fitting(build: Callable[[bool], Table], width: int) -> Table:
    """``build(True)``, the wide form, when its rows fit ``width`` columns unwrapped; else
    ``build(False)``, the narrow one (shorter times and headers, whose text columns fold)."""
    wide = build(True)
    return wide if natural_width(wide) <= width else build(False)


def add_text_column(table: Table, header: str) -> None:
    """A column of names, paths or messages: too long for the column, they wrap within it
    (at a blank, else anywhere), never cut short."""
    table.add_column(header, overflow="fold")


def add_figure_column(table: Table, header: str, *, right: bool = True) -> None:
    """A column of figures ('129.8 MiB', '57.2 MiB/s', '2026-11-29 19:40'): never wrapped,
    so that a number and its unit stay on one line; right-aligned, as numbers are."""
    table.add_column(header, justify="right" if right else "left", no_wrap=True)


def add_noted_figure_column(table: Table, header: str, figures: Iterable[str]) -> None:
    """A column of a figure over a note that may wrap ('57.2 MiB/s' over 'measured (1
    backup)'): the column is never narrower than its widest figure."""
    widest = max((Text.from_markup(f).cell_len for f in figures), default=0)
    table.add_column(header, justify="right", overflow="fold", min_width=widest)


def when(stamp: str | None, *, short: bool = False, none: str = "") -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC' (as the dashboard writes it), or 'MM-DD
    HH:MM' (UTC) for a narrow table; ``none`` for no time at all."""
    if not stamp:
        return none
    moment = datetime.fromisoformat(stamp)
    if moment.tzinfo is None:  # stored without a zone: UTC, as vmvault writes every time
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S UTC")
