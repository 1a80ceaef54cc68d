"""`vmvault`: the app, its ``--server`` option, and every command group registered on it.

The commands live in ``cli/commands/`` (a module per group), their human output in
``cli/render/``; those that also work with ``--server`` go through ``cli/client.py``.
Every command prints a human summary, or with ``--json`` exactly one JSON document. Errors
are one line on stderr (or ``{"error": ...}`` with --json) and a non-zero exit code.
"""

from __future__ import annotations

import sys

import typer

# typer carries its own copy of click: the errors it raises are this copy's
from typer._click.exceptions import ClickException
from typer.exceptions import Abort

from vmvault import __version__
from vmvault.cli.commands import (
    demo,
    export,
    jobs,
    planning,
    points,
    protection,
    testdisk,
    vault,
    vm,
)
from vmvault.cli.commands import server as server_commands
from vmvault.cli.options import JsonOpt, use_cache, use_remote
from vmvault.cli.output import console, emit_json, fail
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


def _register_commands() -> None:
    """Every command and group; `vmvault --help` lists the commands in this order, then the
    groups in theirs."""
    app.command("init")(vault.init)
    app.command("backup")(points.backup_cmd)
    app.command("list")(points.list_cmd)
    app.command("restore")(points.restore)
    app.command("verify")(points.verify)
    app.command("export")(export.export_cmd)
    app.command("check")(vault.check)
    app.command("forget")(points.forget)
    app.command("prune")(points.prune)
    app.command("plan")(planning.plan)
    app.command("cost")(planning.cost)
    app.command("gc")(vault.gc)
    app.add_typer(vault.app, name="vault")
    app.command("demo")(demo.demo_cmd)
    app.add_typer(testdisk.app, name="testdisk")
    app.add_typer(vm.app, name="vm")
    app.add_typer(jobs.app, name="jobs")
    app.command("worker")(jobs.worker)
    app.command("scheduler")(jobs.scheduler)
    app.add_typer(protection.app, name="protection")
    vault.app.command("immutability")(protection.immutability)
    vault.app.command("soft-delete")(protection.soft_delete)
    app.command("serve")(server_commands.serve)
    app.add_typer(server_commands.token_app, name="token")
    app.add_typer(server_commands.alerts_app, name="alerts")


_register_commands()


def run() -> None:
    """The `vmvault` entry point. With ``--json`` a mistake on the command line (an unknown
    option, a missing argument, a bad value) is the JSON error document too, with the
    exit code (2) of any other bad input; without it, click's usage message as ever."""
    if "--json" not in sys.argv[1:]:
        app()
        return
    try:
        outcome = app(standalone_mode=False)
    except ClickException as exc:
        problem = UsageError(exc.format_message())
        emit_json({"error": {"code": problem.code, "message": problem.message}})
        sys.exit(exc.exit_code)
    except Abort:
        sys.exit(1)
    # Without standalone mode click hands back the exit code of a typer.Exit (an int),
    # where it would have exited with it.
    sys.exit(outcome if isinstance(outcome, int) else 0)
