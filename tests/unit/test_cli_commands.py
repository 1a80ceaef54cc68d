"""The CLI loads only the command a run names (start-up time), and all of them for help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vmvault.cli.main import COMMANDS, command_named


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["files", "ls", "latest"], "files"),
        (["--server", "http://h:8080", "--token", "t", "list"], "list"),
        (["--no-cache", "vault", "key", "list"], "vault"),
        (["--help"], None),
        (["version"], None),  # the app's own command: nothing else to load
        (["nonsense"], None),  # a mistake: all loaded, so the error lists every command
        ([], None),
    ],
)
def test_the_command_a_line_names(argv: list[str], named: str | None) -> None:
    assert command_named(argv) == named


def test_a_run_of_files_does_not_import_the_backup_engine() -> None:
    code = (
        "import sys; sys.argv = ['vmvault', 'files', '--help']\n"
        "from vmvault.cli.main import run\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        "print('vmvault.app.backup' in sys.modules, 'vmvault.inventory.model' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "False False", done.stdout + done.stderr


def test_help_lists_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from vmvault.cli.main import run; run()", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0
    for name, *_ in COMMANDS:
        assert f" {name} " in done.stdout, name
