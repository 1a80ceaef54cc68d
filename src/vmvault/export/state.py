"""The exports running on this host: one small JSON record each, in a private folder.

`vmvault export` writes a record once nbdkit is started; `--list` reads them, dropping
those whose process is gone (killed, crashed) together with their files; `--stop` ends
the process and removes them; an export that ends by itself (expiry, a signal) removes
its own at exit (export/service.py).

The folder is ``$VMVAULT_EXPORT_DIR``, else ``$XDG_RUNTIME_DIR/vmvault/exports``, else
``/run/vmvault/exports`` for root, else ``<cache root>/exports``; mode 0700, since the
Unix sockets in it give whoever reaches them the disk, and NBD asks for no password.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from vmvault.backends.cache_files import cache_root
from vmvault.errors import VmvaultError

EXPORT_DIR_ENV = "VMVAULT_EXPORT_DIR"


class ExportStateError(VmvaultError):
    code = "export_state"


class ExportRecord(TypedDict):
    id: str
    point: str
    vm: str
    disk: str
    size: int
    writable: bool
    uri: str
    socket: str | None  # a Unix socket's path; None when served on TCP
    pid: int
    started: str  # ISO 8601, UTC
    expires: str | None  # ISO 8601, UTC; None until the export answers
    pidfile: str
    log: str  # nbdkit's log: the export's errors (damaged chunks) are named there
    vault: str
    # The process the export lives for (an instant VM's QEMU): set once bound, when the
    # export stops expiring and ends with that process instead (``owner_path``).
    owner: NotRequired[str]


def runtime_dir(env: str, name: str) -> Path:
    """A private folder of this host's running things (exports, instant VMs): ``$env``,
    else ``$XDG_RUNTIME_DIR/vmvault/NAME``, else ``/run/vmvault/NAME`` for root, else
    ``<cache root>/NAME``; made 0700 if new, refused if someone else owns it."""
    if chosen := os.environ.get(env):
        directory = Path(chosen).expanduser()
    elif os.path.isabs(runtime := os.environ.get("XDG_RUNTIME_DIR", "")):
        directory = Path(runtime) / "vmvault" / name
    elif os.geteuid() == 0:
        directory = Path("/run/vmvault") / name
    else:
        directory = cache_root() / name
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.stat()
    if info.st_uid != os.geteuid():
        raise ExportStateError(f"folder {directory} belongs to another user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        directory.chmod(0o700)
    return directory


def prepare_export_dir() -> Path:
    """The export records' folder (see ``runtime_dir``)."""
    return runtime_dir(EXPORT_DIR_ENV, "exports")


def record_path(directory: Path, export_id: str) -> Path:
    return directory / f"{export_id}.json"


def stop_request_path(path: Path) -> Path:
    """The file whose appearance asks the export of record ``path`` to end (its watchdog
    looks for it: export/watchdog.py)."""
    return path.with_suffix(".stop")


def owner_path(path: Path) -> Path:
    """The file naming the process the export of record ``path`` lives for: once it
    exists, its watchdog ends the export when that process is gone, not at the expiry."""
    return path.with_suffix(".owner")


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Written whole or not at all (a reader never sees half a document), mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def write_record(path: Path, record: ExportRecord) -> None:
    write_json(path, record)


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, /proc/PID/stat's 22nd field),
    or None if it is gone or a zombie: with the pid, it names one process, never a later
    one that reuses the pid."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def owner_alive(path: Path) -> bool | None:
    """Whether the process named in the owner file ``path`` still runs; None while there
    is no (readable) owner file."""
    try:
        doc = json.loads(path.read_text())
        pid, start = int(doc["pid"]), int(doc["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return process_start(pid) == start


def read_record(path: Path) -> ExportRecord | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None  # type: ignore[return-value]


def read_records(directory: Path) -> list[tuple[Path, ExportRecord]]:
    found = []
    for path in sorted(directory.glob("*.json")):
        if (record := read_record(path)) is not None:
            found.append((path, record))
    return found


def is_running(record: ExportRecord) -> bool:
    """Whether the record's nbdkit still runs: its process exists, is no zombie, and is
    the one started for this export (its command line names the export's id; a pid can be
    reused once the process is gone)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if process_start(pid) is None:  # gone, or ended and not yet reaped by its adopter
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return f"export-id={record['id']}".encode() in cmdline.split(b"\0")


def remove_export(path: Path) -> None:
    """Remove a record and the files it names: its socket (only if a socket is still
    there), pidfile and log."""
    record = read_record(path)
    if record is not None:
        socket = record.get("socket")
        if socket:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(socket).st_mode):
                    os.unlink(socket)
        for key in ("pidfile", "log"):
            if name := record.get(key):
                Path(str(name)).unlink(missing_ok=True)
    stop_request_path(path).unlink(missing_ok=True)
    owner_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def live_exports(directory: Path) -> list[tuple[Path, ExportRecord]]:
    """The records of running exports; those of ended ones are removed on the way."""
    live = []
    for path, record in read_records(directory):
        if is_running(record):
            live.append((path, record))
        else:
            remove_export(path)
    return live
