"""Starting and stopping exports: nbdkit in the background, serving export/plugin.py.

``start_export`` checks what it can before anything starts (the point, the disk, its
manifest, the passphrase: the same one-line errors as a restore), then runs nbdkit in the
foreground of a new session of its own (so it outlives this command and no terminal's
signal reaches it), its log in the export's folder, and waits for the plugin's word that
it serves the disk, then for the NBD greeting at the address it prints. The passphrase
reaches the plugin through a pipe, never nbdkit's command line or environment.
``stop_exports`` ends them: a stop request the plugin's watchdog acts on (it disconnects
the clients, nbdkit exits, the plugin releases the vault's lock and removes the export's
files), then signals if that does not do it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import vmvault
from vmvault.app.context import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, Context
from vmvault.app.point_ref import resolve_point
from vmvault.backends.url import is_directory_vault
from vmvault.engine.restore import point_disk
from vmvault.errors import Conflict, NotFound, UsageError, VmvaultError
from vmvault.export.state import (
    ExportRecord,
    is_running,
    live_exports,
    owner_alive,
    owner_path,
    prepare_export_dir,
    process_start,
    read_record,
    read_records,
    record_path,
    remove_export,
    stop_request_path,
    write_json,
    write_record,
)

PLUGIN = Path(__file__).with_name("plugin.py")
DEFAULT_EXPIRY = 12 * 3600.0  # like a disk export of Azure: half a day
# Opening the vault inside nbdkit brings the host's chunk index up to date first: on a
# large vault the host has not seen, that reads every index object.
START_TIMEOUT = 600.0
GREETING_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
NBD_GREETING = b"NBDMAGIC" + b"IHAVEOPT"
NBD_FLAG_C_FIXED_NEWSTYLE = 1
NBD_OPT_ABORT = 2


class ExportFailed(VmvaultError):
    """nbdkit did not start, or the plugin could not serve the point."""

    code = "export_failed"


class NbdkitMissing(VmvaultError):
    code = "nbdkit_missing"


class PluginError(VmvaultError):
    """An error the plugin met while starting, with the code and exit code it had there."""

    def __init__(self, code: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``2d`` (a bare number: seconds)."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(f"--expires {text!r} is not a duration such as 90s, 30m, 12h or 2d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def check_nbdkit() -> str:
    """nbdkit's path, once its Python plugin is known to embed this Python's version (the
    compiled modules vmvault uses are built for it)."""
    nbdkit = shutil.which("nbdkit")
    if nbdkit is None:
        raise NbdkitMissing("nbdkit is not installed (Debian: nbdkit, nbdkit-plugin-python)")
    done = subprocess.run(
        [nbdkit, "python", "--dump-plugin"], capture_output=True, text=True, timeout=60
    )
    found = re.search(r"^python_version=(\d+)\.(\d+)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise NbdkitMissing(
            "nbdkit's Python plugin is not installed (Debian: nbdkit-plugin-python)"
        )
    embedded = (int(found.group(1)), int(found.group(2)))
    if embedded != sys.version_info[:2]:
        raise NbdkitMissing(
            f"nbdkit's Python plugin runs Python {embedded[0]}.{embedded[1]}, vmvault "
            f"{sys.version_info[0]}.{sys.version_info[1]}: their compiled modules differ"
        )
    return nbdkit


def python_folders() -> list[str]:
    """Where this vmvault and its dependencies are: the plugin puts them on the embedded
    interpreter's path."""
    source = str(Path(vmvault.__file__).resolve().parents[1])
    return list(dict.fromkeys([source, *site.getsitepackages()]))


def start_export(
    ctx: Context,
    point_ref: str,
    *,
    disk: str | None = None,
    vm: str | None = None,
    socket_path: str | None = None,
    port: int | None = None,
    address: str = "127.0.0.1",
    writable: bool = False,
    expires_in: float = DEFAULT_EXPIRY,
    cache_mb: int = 128,
) -> ExportRecord:
    if socket_path is not None and port is not None:
        raise UsageError("give --socket or --port, not both")
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--port {port} is not a TCP port")
    if cache_mb < 16:
        raise UsageError("--cache-mb must be at least 16")
    nbdkit = check_nbdkit()
    vault = ctx.open_vault(load_index=False)
    point_id = resolve_point(vault, point_ref, vm)
    point = vault.get_point(point_id)
    entry = point_disk(vault, point, disk)
    manifest = vault.get_manifest(entry["manifest"])  # a damaged one is refused here
    passphrase = ctx.passphrase()

    directory = prepare_export_dir()
    export_id = secrets.token_hex(4)
    path = record_path(directory, export_id)
    log_path = directory / f"{export_id}.log"
    pidfile = directory / f"{export_id}.pid"
    listen: list[str]
    sock: str | None = None
    if port is None:
        sock = os.path.abspath(socket_path) if socket_path else str(directory / f"{export_id}.sock")
        if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
            raise UsageError(f"socket path {sock} is longer than {SOCKET_PATH_MAX} bytes")
        if os.path.lexists(sock):
            raise UsageError(f"{sock} already exists")
        listen, uri = ["-U", sock], f"nbd+unix:///?socket={sock}"
    else:
        host = f"[{address}]" if ":" in address else address
        listen, uri = ["-i", address, "-p", str(port)], f"nbd://{host}:{port}/"
    location = ctx.vault_path
    if is_directory_vault(location):
        location = os.path.abspath(location)

    secret = passphrase.encode()
    # A pipe holds 64 KiB before a write blocks, and nbdkit reads it only once started.
    if len(secret) >= 60000:
        raise UsageError("the passphrase is too long to hand to the export")
    command = [
        nbdkit,
        "-f",  # this command puts it in the background: see the module's docstring
        "--log=stderr",
        "-P",
        str(pidfile),
        *listen,
        *(["--filter=cow"] if writable else ["-r"]),
        "python",
        str(PLUGIN),
        f"sys-path={':'.join(python_folders())}",
        f"vault={location}",
        f"point={point_id}",
        f"disk={entry['name']}",
        f"export-id={export_id}",
        f"expires-in={expires_in:g}",
        f"record={path}",
        *([f"socket={sock}"] if sock is not None else [f"port={port}"]),
        f"cache-mb={cache_mb}",
        *(["vault-cache=off"] if ctx.cache is False else []),
    ]
    # The plugin reads the passphrase from a pipe alone: the variables that hold it here
    # stay out of nbdkit's environment (which other processes of the user can read).
    env = {k: v for k, v in os.environ.items() if k not in (PASSPHRASE_ENV, PASSPHRASE_FILE_ENV)}
    passphrase_read, passphrase_write = os.pipe()
    status_read, status_write = os.pipe()
    try:
        os.write(passphrase_write, secret)
        os.close(passphrase_write)
        passphrase_write = -1
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            process = subprocess.Popen(
                [
                    *command,
                    f"passphrase-fd={passphrase_read}",
                    f"status-fd={status_write}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=env,
                pass_fds=(passphrase_read, status_write),
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
    except BaseException:
        os.close(status_read)
        raise
    finally:
        # Only nbdkit holds these now: the status pipe reads as closed once it is gone.
        for fd in (passphrase_read, passphrase_write, status_write):
            if fd >= 0:
                os.close(fd)
    record: ExportRecord = {
        "id": export_id,
        "point": point_id,
        "vm": point["vm"],
        "disk": entry["name"],
        "size": manifest.size,
        "writable": writable,
        "uri": uri,
        "socket": sock,
        "pid": process.pid,
        "started": _iso(time.time()),
        "expires": None,
        "pidfile": str(pidfile),
        "log": str(log_path),
        "vault": location,
    }
    write_record(path, record)
    try:
        status = _wait_for_plugin(status_read, process, log_path)
        _wait_for_greeting(sock, address, port)
    except BaseException:
        _end(process.pid, record, path, ask=False)
        remove_export(path)
        raise
    finally:
        os.close(status_read)
    record["expires"] = _iso(float(status["expires"]))
    write_record(path, record)
    return record


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _wait_for_plugin(fd: int, process: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
    """The plugin's one line: it serves the disk, or why it cannot. The pipe closing
    without it means nbdkit stopped before the plugin could say (its log says why)."""
    deadline = time.monotonic() + START_TIMEOUT
    received = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ExportFailed(f"the export did not start within {START_TIMEOUT:.0f} s")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        piece = os.read(fd, 65536)
        if not piece:
            break
        received += piece
    if received.strip():
        doc: dict[str, Any] = json.loads(received)
        if "error" in doc:
            error = doc["error"]
            raise PluginError(str(error["code"]), str(error["message"]), int(error["exit_code"]))
        return doc
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT)  # its last words are in the log by then
    raise ExportFailed(f"nbdkit stopped: {_last_error(log_path)}")


def _last_error(log_path: Path) -> str:
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    errors = [line for line in lines if "error" in line.lower()] or lines
    return errors[-1] if errors else "no message"


def _wait_for_greeting(sock: str | None, address: str, port: int | None) -> None:
    """The export answers where the printed URI says: the NBD server's greeting, then a
    polite goodbye (the option to abort the handshake)."""
    deadline = time.monotonic() + GREETING_TIMEOUT
    while True:
        try:
            if sock is not None:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.settimeout(GREETING_TIMEOUT)
                conn.connect(sock)
            else:
                assert port is not None
                conn = socket.create_connection((address, port), timeout=GREETING_TIMEOUT)
            with conn:
                greeting = b""
                while len(greeting) < len(NBD_GREETING) + 2:
                    piece = conn.recv(64)
                    if not piece:
                        break
                    greeting += piece
                if not greeting.startswith(NBD_GREETING):
                    raise ExportFailed("the export does not answer as an NBD server")
                conn.sendall(
                    NBD_FLAG_C_FIXED_NEWSTYLE.to_bytes(4, "big")
                    + b"IHAVEOPT"
                    + NBD_OPT_ABORT.to_bytes(4, "big")
                    + (0).to_bytes(4, "big")
                )
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ExportFailed(f"the export does not answer: {exc}") from None
            time.sleep(0.1)


def _end(pid: int, record: ExportRecord, path: Path, *, ask: bool = True) -> None:
    """Ask the export's watchdog to end it (it disconnects the clients, which nbdkit alone
    would wait for), then SIGTERM (enough while no client is connected: an export that has
    not started, ``ask=False``), then SIGKILL, each given ``STOP_TIMEOUT``."""
    if ask:
        stop_request_path(path).touch()
        if _wait_gone(record, STOP_TIMEOUT):
            return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(record, STOP_TIMEOUT):
            return
    raise ExportFailed(f"export {record['id']} (pid {pid}) does not stop")


def _wait_gone(record: ExportRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(record):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def bind_export(export_id: str, pid: int, owner: str) -> None:
    """Make the export live exactly as long as process ``pid`` (``owner`` says what it is,
    for `--list`): its expiry no longer applies, and it ends once that process is gone."""
    path = record_path(prepare_export_dir(), export_id)
    record = read_record(path)
    start = process_start(pid)
    if record is None or not is_running(record):
        raise ExportFailed(f"export {export_id} is no longer running")
    if start is None:
        raise ExportFailed(f"{owner} (pid {pid}) is no longer running")
    write_json(owner_path(path), {"pid": pid, "start": start})
    record["owner"] = f"{owner} (pid {pid})"
    write_record(path, record)


def list_exports() -> list[ExportRecord]:
    return [record for _, record in live_exports(prepare_export_dir())]


def stop_exports(which: str, *, bound_too: bool = False) -> list[str]:
    """Stop the export ``which`` (its id) or ``all``; the ids stopped. An export bound to a
    running process (a VM's disk) is left alone, refused by its id, unless ``bound_too``
    (what ends that VM ends its exports with it)."""
    records = read_records(prepare_export_dir())
    chosen = records if which == "all" else [(p, r) for p, r in records if r["id"] == which]
    if which != "all" and not chosen:
        raise NotFound(f"no export {which!r} (see `vmvault export --list`)")
    stopped = []
    for path, record in chosen:
        if not bound_too and owner_alive(owner_path(path)):
            if which != "all":
                raise Conflict(
                    f"export {which} is the disk of {record.get('owner', 'a running VM')}: "
                    "finish or stop that VM (vmvault vm instant-restore --finish/--stop)"
                )
            continue
        if is_running(record):
            _end(record["pid"], record, path)
            stopped.append(record["id"])
        remove_export(path)
    return stopped
