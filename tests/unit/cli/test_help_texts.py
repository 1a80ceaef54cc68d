"""Help texts as rich shows them: no bracketed word taken for markup and dropped, and each
command's line in its group's list one sentence, with no line break of the docstring's."""

from __future__ import annotations

from collections.abc import Iterator

import typer
from rich.text import Text
from typer._click.core import Command

from vmvault.cli import main


def _commands() -> Iterator[tuple[str, Command]]:
    main._register_commands()
    root = typer.main.get_command(main.app)
    todo: list[tuple[str, Command]] = [("vmvault", root)]
    while todo:
        path, command = todo.pop()
        yield path, command
        subcommands: dict[str, Command] = getattr(command, "commands", {})  # a group's
        todo += [(f"{path} {name}", sub) for name, sub in subcommands.items()]


def test_no_help_text_loses_a_bracketed_word_to_markup() -> None:
    for path, command in _commands():
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            shown = Text.from_markup(text).plain
            assert shown == text.replace("\\[", "["), (path, text)


def test_each_command_is_one_line_of_its_group_list() -> None:
    for path, command in _commands():
        first = (command.help or "").split("\n\n")[0].strip()
        assert "\n" not in first, (path, first)
