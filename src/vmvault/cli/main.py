"""`vmvault`: the app, its ``--server`` option, and every command group registered on it.

The commands live in ``cli/commands/`` (a module per group), their human output in
``cli/render/``; those that also work with ``--server`` go through ``cli/client.py``.
Every command prints a human summary, or with ``--json`` exactly one JSON document. Errors
are one line on stderr (or ``{"error": ...}`` with --json) and a non-zero exit code.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from typing import Any

import typer

# typer carries its own copy of click: the errors it raises are this copy's
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.exceptions import Abort

from vmvault import __version__
from vmvault.cli.options import JsonOpt, use_cache, use_remote
from vmvault.cli.output import console, emit_json, fail, report
from vmvault.errors import UsageError

app = typer.Typer(
    help="vmvault: incremental, deduplicated, encrypted backups of VM disks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    server: str | None = typer.Option(
        None,
        "--server",
        envvar="VMVAULT_SERVER",
        help="Talk to this vmvault server (env VMVAULT_SERVER) for read and run commands.",
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="VMVAULT_TOKEN", help="API token for --server (env VMVAULT_TOKEN)."
    ),
    ca_cert: str | None = typer.Option(
        None, "--ca-cert", envvar="VMVAULT_CA_CERT", help="CA bundle to trust for an https server."
    ),
    no_cache: bool = typer.Option(
        False,
        "--no-cache",
        envvar="VMVAULT_NO_CACHE",
        help="Read an object-store vault directly, without the local cache (env VMVAULT_NO_CACHE).",
    ),
) -> None:
    """vmvault: incremental, deduplicated, encrypted backups of VM disks."""
    use_cache(not no_cache)
    if server is None:
        use_remote(None)
        return
    if not token:
        fail(UsageError("--server needs --token (or VMVAULT_TOKEN)"), False)
    from vmvault.cli.remote import Remote  # httpx: slow to import, only for --server

    use_remote(Remote(server, token, ca_cert))


@app.command()
def version(json: bool = JsonOpt) -> None:
    """Print the version."""
    if json:
        emit_json({"version": __version__})
    else:
        console.print(f"vmvault {__version__}")


# Every command and group as (name, module of cli/commands, attribute, group or command);
# `vmvault --help` lists the commands in this order, then the groups in theirs. A run
# imports only the module of the command it names: each module imports the use cases its
# commands need, so `vmvault files ls` does not load the backup engine (start-up time).
COMMANDS: tuple[tuple[str, str, str, bool], ...] = (
    ("init", "vault", "init", False),
    ("backup", "backup", "backup_cmd", False),
    ("list", "points", "list_cmd", False),
    ("restore", "restore", "restore", False),
    ("verify", "points", "verify", False),
    ("export", "export", "export_cmd", False),
    ("files", "files", "app", True),
    ("mount", "files", "mount_cmd", False),
    ("check", "vault", "check", False),
    ("forget", "points", "forget", False),
    ("prune", "points", "prune", False),
    ("plan", "planning", "plan", False),
    ("cost", "planning", "cost", False),
    ("gc", "vault", "gc", False),
    ("vault", "vault", "app", True),
    ("demo", "demo", "demo_cmd", False),
    ("testdisk", "testdisk", "app", True),
    ("vm", "vm", "app", True),
    ("jobs", "jobs", "app", True),
    ("worker", "jobs", "worker", False),
    ("scheduler", "jobs", "scheduler", False),
    ("protection", "protection", "app", True),
    ("serve", "server", "serve", False),
    ("token", "server", "token_app", True),
    ("alerts", "server", "alerts_app", True),
)
# Commands and groups of a group, defined in another module: (group, name, module,
# attribute, a group or a command).
GROUP_COMMANDS = (
    ("vault", "key", "keys", "app", True),
    ("vault", "immutability", "protection", "immutability", False),
    ("vault", "soft-delete", "protection", "soft_delete", False),
)
# The app's own options that take a value (what comes before the command's name).
VALUE_OPTIONS = ("--server", "--token", "--ca-cert")


def _module(name: str) -> Any:
    return importlib.import_module(f"vmvault.cli.commands.{name}")


def _register_commands(only: str | None = None) -> None:
    """Register every command, or only the one named ``only`` (and what its group holds)."""
    for name, module, attribute, group in COMMANDS:
        if only is not None and name != only:
            continue
        target = getattr(_module(module), attribute)
        if group:
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
        for parent, sub, sub_module, sub_attribute, sub_group in GROUP_COMMANDS:
            if parent == name:
                member = getattr(_module(sub_module), sub_attribute)
                if sub_group:
                    target.add_typer(member, name=sub)
                else:
                    target.command(sub)(member)


def command_named(argv: list[str]) -> str | None:
    """The command a command line runs (its first word after the app's own options), if it
    is one of ``COMMANDS``; None for ``--help``, ``version`` or a mistake (then all load)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg if any(arg == c[0] for c in COMMANDS) else None
        elif arg in ("--help", "-h"):
            return None
    return None


def run() -> None:
    """The `vmvault` entry point: only the command a line names is loaded (all of them for
    help). A mistake on the command line (an unknown option or command, a missing argument,
    a bad value) is one line, ``error: ...``, with exit code 2 as any other bad input, or
    with ``--json`` the JSON error document; `--help` is click's help as ever."""
    _register_commands(command_named(sys.argv[1:]))
    gc.freeze()  # what the command needs is loaded: the collector never scans it again
    gc.enable()  # (off while it loaded when started as the script: cli/entry.py)
    as_json = "--json" in sys.argv[1:]
    try:
        outcome = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        if not as_json:  # `vmvault vm`: typer printed the group's help already
            sys.exit(exc.exit_code)
        report(UsageError(_one_line(exc.format_message())), as_json)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        report(UsageError(_one_line(exc.format_message())), as_json)
        sys.exit(exc.exit_code)
    except Abort:  # end of input at a prompt
        report(UsageError("aborted"), as_json)
        sys.exit(1)
    except BrokenPipeError:  # `vmvault list | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    # Without standalone mode click hands back the exit code of a typer.Exit (an int),
    # where it would have exited with it.
    sys.exit(outcome if isinstance(outcome, int) else 0)


def _one_line(message: str) -> str:
    """Click's message with its line breaks (a long choice list) made blanks."""
    return " ".join(message.split())
