"""What one nbdkit process serves: the settings the launcher gave, the vault held open
under an ``export`` lock, the disk's reader, and the watchdog that ends the export at its
expiry or when asked (export/watchdog.py).

Nothing here knows nbdkit: the plugin (export/plugin.py) hands over its ``key=value``
parameters and a function that shuts the server down, and calls ``close`` at its end.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmvault.app.context import Context
from vmvault.engine.restore import point_disk
from vmvault.errors import UsageError, VmvaultError
from vmvault.export.reader import MiB, PointReader
from vmvault.export.state import owner_path, remove_export, stop_request_path
from vmvault.export.watchdog import Watchdog

log = logging.getLogger("vmvault")
# The nbdkit parameters the launcher passes (export/launch.py), beside ``sys-path``, which
# the plugin itself takes first.
REQUIRED = ("vault", "point", "disk", "export-id", "expires-in", "passphrase-fd", "status-fd")
OPTIONAL = ("cache-mb", "vault-cache", "record", "socket", "port")


@dataclass(frozen=True)
class ServiceSettings:
    vault: str
    point: str  # a full point id: the launcher resolved the user's reference
    disk: str
    export_id: str
    expires_in: float  # seconds from the moment the export is ready
    passphrase_fd: int
    status_fd: int
    cache_bytes: int = 128 * MiB
    vault_cache: bool | None = None  # False: --no-cache
    record: str | None = None  # the export's record (export/state.py), removed at the end
    socket: str | None = None  # where nbdkit listens: its Unix socket, or
    port: int | None = None  # its TCP port

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> ServiceSettings:
        unknown = sorted(set(params) - set(REQUIRED) - set(OPTIONAL))
        missing = [k for k in REQUIRED if k not in params]
        if unknown or missing:
            raise UsageError(f"plugin parameters: unknown {unknown}, missing {missing}")
        try:
            return cls(
                vault=params["vault"],
                point=params["point"],
                disk=params["disk"],
                export_id=params["export-id"],
                expires_in=float(params["expires-in"]),
                passphrase_fd=int(params["passphrase-fd"]),
                status_fd=int(params["status-fd"]),
                cache_bytes=int(params.get("cache-mb", "128")) * MiB,
                vault_cache=False if params.get("vault-cache") == "off" else None,
                record=params.get("record"),
                socket=params.get("socket"),
                port=int(params["port"]) if "port" in params else None,
            )
        except ValueError as exc:
            raise UsageError(f"plugin parameters: {exc}") from None


def read_secret(fd: int) -> str:
    """The passphrase the launcher wrote into a pipe (never on nbdkit's command line nor in
    its environment, which other processes of the user can read): read whole, closed."""
    chunks = []
    try:
        while piece := os.read(fd, 65536):
            chunks.append(piece)
    finally:
        os.close(fd)
    return b"".join(chunks).decode().rstrip("\r\n")


def report(fd: int, doc: Mapping[str, Any]) -> None:
    """Tell the launcher how the start went (one JSON line), and close the pipe: the
    launcher waits for that line, or for the pipe to close when nbdkit dies first."""
    try:
        os.write(fd, json.dumps(doc).encode() + b"\n")
    finally:
        os.close(fd)


class ExportService:
    """The vault, the point's disk and the expiry timer of one export."""

    def __init__(
        self, settings: ServiceSettings, passphrase: str, shutdown: Callable[[], None]
    ) -> None:
        self.settings = settings
        self._passphrase = passphrase
        self._shutdown = shutdown
        self._stack = ExitStack()
        self.reader: PointReader | None = None
        self.expires = 0.0

    def start(self) -> None:
        s = self.settings
        ctx = Context(s.vault, known_passphrase=self._passphrase, cache=s.vault_cache)
        try:
            # Held until the export ends: garbage collection deletes nothing while a live
            # lock exists, so no pack the export reads can vanish under it.
            vault = self._stack.enter_context(ctx.session("export"))
            point = vault.get_point(s.point)
            entry = point_disk(vault, point, s.disk)
            manifest = vault.get_manifest(entry["manifest"])
            self.reader = PointReader(
                vault, manifest, name=entry["name"], cache_bytes=s.cache_bytes
            )
            self._stack.callback(self.reader.close)
            self.expires = time.time() + s.expires_in
            watchdog = Watchdog(
                self.expires,
                stop_request_path(Path(s.record)) if s.record else None,
                self._shutdown,
                socket_path=s.socket,
                port=s.port,
                owner=owner_path(Path(s.record)) if s.record else None,
            )
            watchdog.start()
            self._stack.callback(watchdog.stop)
        except BaseException:
            self.close()
            raise
        log.info(
            "serving disk %s of point %s, %d bytes, until %s",
            entry["name"],
            s.point,
            manifest.size,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.expires)),
        )

    def close(self) -> None:
        """Release the vault's lock, then remove the export's record and the files it
        names (socket, pidfile, log): an export that ended leaves nothing behind."""
        try:
            self._stack.close()
        finally:
            if self.settings.record is not None:
                remove_export(Path(self.settings.record))


def error_doc(exc: BaseException) -> dict[str, Any]:
    """A failed start as the launcher re-raises it: the error's code, message, exit code."""
    if isinstance(exc, VmvaultError):
        return {"error": {"code": exc.code, "message": exc.message, "exit_code": exc.exit_code}}
    return {"error": {"code": "error", "message": f"{type(exc).__name__}: {exc}", "exit_code": 1}}
