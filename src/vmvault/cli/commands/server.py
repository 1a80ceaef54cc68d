"""`vmvault serve` (API, dashboard, scheduler in one process) and `vmvault token` (API tokens)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import typer

from vmvault.cli.client import get_client
from vmvault.cli.options import (
    BrokerOpt,
    CatalogOpt,
    InventoryOpt,
    JsonOpt,
    MaintenanceAtOpt,
    PassFileOpt,
    VaultOpt,
    context,
    maintenance_time,
)
from vmvault.cli.output import daemon_logging, emit_json, guarded, show
from vmvault.cli.render.server import (
    print_alerts,
    print_serving,
    print_token_created,
    print_token_revoked,
    print_tokens,
)
from vmvault.errors import UsageError

token_app = typer.Typer(
    help="API tokens for the server (created here, shown once).", no_args_is_help=True
)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8400, "--port", min=1, max=65535),
    tls_cert: str | None = typer.Option(None, "--tls-cert", help="PEM certificate (enables TLS)."),
    tls_key: str | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
    restore_root: str | None = typer.Option(
        None, "--restore-root", help="Directory where API restores create new VMs."
    ),
    no_scheduler: bool = typer.Option(
        False, "--no-scheduler", help="Serve only: run no scheduler, worker or alert delivery."
    ),
    tick: float = typer.Option(30.0, "--tick", min=0.1, help="Seconds between scheduler ticks."),
    maintenance_at: str = MaintenanceAtOpt,
    broker: str | None = BrokerOpt,
    inventory: str | None = InventoryOpt,
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
) -> None:
    """Serve the REST API (/api/v1) and the dashboard, with the scheduler and a worker."""
    # uvicorn, FastAPI and SQLAlchemy take seconds to import: only `serve` needs them.
    import uvicorn

    from vmvault.server.app import create_app
    from vmvault.server.state import ServerConfig

    def build() -> Any:
        if bool(tls_cert) != bool(tls_key):
            raise UsageError("give both --tls-cert and --tls-key, or neither")
        if restore_root is not None:
            # Refused now, not as every API restore's job failing later (a symlink to a
            # folder is one: it is resolved).
            root = Path(restore_root).resolve()
            if not root.is_dir():
                what = "is not a directory" if root.exists() else "does not exist"
                raise UsageError(
                    f"--restore-root {restore_root} {what}: create it first "
                    f"(install -d -m 0750 {restore_root})"
                )
        ctx = context(vault, catalog, passphrase_file)
        config = ServerConfig(
            vault=ctx.vault_path,
            catalog_url=ctx.catalog_url,
            passphrase_file=passphrase_file,
            inventory=inventory,
            restore_root=restore_root,
            scheduler=not no_scheduler,
            worker=not no_scheduler,
            alerts=not no_scheduler,
            tick_seconds=tick,
            maintenance_time=maintenance_time(maintenance_at),
            secure_cookies=bool(tls_cert),
            ask_passphrase=ctx.ask_passphrase,
            broker=broker,
        )
        return create_app(config)

    daemon_logging()  # before the app is built: its opening lines in the same format
    # uvicorn logs its start and stop under "uvicorn.error": an operator reading
    # "INFO uvicorn.error: Started server process" would look for an error that is not there
    logging.getLogger("uvicorn.error").addFilter(_named_uvicorn)
    app = guarded(False, build)
    scheme = "https" if tls_cert else "http"
    print_serving(scheme, host, port)
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again for the
    # handler it found: a no-op one makes a requested stop exit 0, as the scheduler does
    # (a service manager then sees a clean stop, not a death by signal).
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: None)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        log_level="info",
        log_config=None,  # uvicorn's lines through the root logger: daemon_logging's format
        # Access logs carry query strings and never the Authorization header: safe to keep.
        access_log=True,
    )
    logging.getLogger("vmvault.server").info("server stopped")


def _named_uvicorn(record: logging.LogRecord) -> bool:
    record.name = "uvicorn"
    return True


def _accounts(vault: str | None, catalog: str | None, passphrase_file: str | None) -> Any:
    from vmvault.server.accounts import Accounts  # SQLAlchemy, slow: token commands alone

    return Accounts(context(vault, catalog, passphrase_file).catalog())


@token_app.command("create")
def create_token(
    name: str = typer.Argument(..., help="Who or what uses the token."),
    role: str = typer.Option("reader", "--role", help="reader, operator or admin."),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Create a token and print it once (the catalog keeps only its hash)."""
    from vmvault.server.accounts import token_doc  # SQLAlchemy, as in _accounts

    def act() -> dict[str, Any]:
        secret, row = _accounts(vault, catalog, passphrase_file).create_token(
            name, role, created_by="cli"
        )
        return {**token_doc(row), "token": secret}

    show(guarded(json, act), json, print_token_created)


@token_app.command("list")
def list_tokens(
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """List tokens (never their secrets)."""
    from vmvault.server.accounts import token_doc  # SQLAlchemy, as in _accounts

    rows = guarded(
        json, lambda: [token_doc(t) for t in _accounts(vault, catalog, passphrase_file).tokens()]
    )
    if json:
        emit_json({"tokens": rows})
    else:
        print_tokens(rows)


@token_app.command("revoke")
def revoke_token(
    token_id: int = typer.Argument(...),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Revoke a token at once (its dashboard sessions end too)."""
    from vmvault.server.accounts import token_doc  # SQLAlchemy, as in _accounts

    doc = guarded(
        json, lambda: token_doc(_accounts(vault, catalog, passphrase_file).revoke(token_id))
    )
    show(doc, json, print_token_revoked)


alerts_app = typer.Typer(help="Alerts: job failures and security events.", no_args_is_help=True)


@alerts_app.command("list")
def list_alerts(
    limit: int = typer.Option(50, "--limit", min=1, max=500),
    vault: str | None = VaultOpt,
    catalog: str | None = CatalogOpt,
    passphrase_file: str | None = PassFileOpt,
    json: bool = JsonOpt,
) -> None:
    """Alerts, newest first, with where each was delivered (works with --server too)."""
    client = get_client(vault, catalog, passphrase_file)
    rows = guarded(json, lambda: client.list_alerts(limit))
    if json:
        emit_json({"alerts": rows})
    else:
        print_alerts(rows)
