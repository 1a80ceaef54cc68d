"""Reading a table the CLI printed, as a user does: a column's cells, lines run together."""

from __future__ import annotations

import re


def column(text: str, header: str, next_header: str | None) -> str:
    """The cells of a table's column run together (a name folded over lines made whole
    again): what its rows hold from where ``header`` starts to where ``next_header`` does."""
    lines = text.splitlines()
    rule = next(n for n, line in enumerate(lines) if line.strip().startswith("─"))
    heads = lines[rule - 1]
    start = re.search(rf"(?<!\S){re.escape(header)}(?!\S)", heads)
    end = re.search(rf"(?<!\S){re.escape(next_header)}(?!\S)", heads) if next_header else None
    assert start is not None, heads
    cells = [line[start.start() : end.start() if end else None] for line in lines[rule + 1 :]]
    return "".join("".join(cell.split()) for cell in cells)
