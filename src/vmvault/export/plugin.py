"""The nbdkit Python plugin (API version 2) that serves one disk of a recovery point.

nbdkit runs this file in its own embedded Python (Debian's libpython, not vmvault's
interpreter), started by export/launch.py as

    nbdkit -f [-r | --filter=cow] ... python plugin.py sys-path=SRC:SITE-PACKAGES
        vault=... point=... disk=... export-id=... expires-in=SECONDS
        passphrase-fd=N status-fd=N [record=PATH] [cache-mb=N] [vault-cache=off]

``sys-path`` comes first: the folders vmvault and its dependencies live in, put in front
of the embedded interpreter's own (Debian's python3-boto3, say, must not shadow the
version vmvault was installed with); nothing of vmvault is imported before it. The rest
is export/service.py's. The disk is read-only here; a writable export puts nbdkit's cow
filter in front, which keeps writes in a local overlay.

This is the only module that imports ``nbdkit``, which exists only inside nbdkit.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import sys
from typing import Any

import nbdkit  # type: ignore[import-not-found]

API_VERSION = 2
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_parameters: dict[str, str] = {}
_state: dict[str, Any] = {}  # "settings", "passphrase", "service" once they exist
log = logging.getLogger("vmvault")


def thread_model() -> int:
    # Requests run in parallel: the reader's cache is locked and the vault's reads are
    # thread-safe (a restore reads with many threads); fetches, decryption and hashing
    # release the GIL, so one client's reads overlap another's.
    return int(nbdkit.THREAD_MODEL_PARALLEL)


def config(key: str, value: str) -> None:
    if key == "sys-path":
        folders = [f for f in value.split(":") if f and f not in sys.path]
        sys.path[0:0] = folders
    else:
        _parameters[key] = value


def config_complete() -> None:
    from vmvault.export.service import ServiceSettings, read_secret

    _outlive_parent()
    settings = ServiceSettings.from_parameters(_parameters)
    _state["settings"] = settings
    # Read now, before anything else can fail: the pipe is closed whatever happens next.
    _state["passphrase"] = read_secret(settings.passphrase_fd)
    handler = logging.StreamHandler(sys.stderr)  # nbdkit's stderr: the export's log
    handler.setFormatter(logging.Formatter(f"vmvault export {settings.export_id}: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _outlive_parent() -> None:
    """Let this nbdkit outlive the command that started it.

    nbdkit 1.32 asks the kernel for SIGTERM when its parent exits (PR_SET_PDEATHSIG) even
    without --exit-with-parent; in the foreground (-f, which keeps its log in the export's
    file) that ends a background export the moment `vmvault export` returns. The launcher
    waits for this plugin's word before it exits, so clearing it here leaves no window."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG, 0) failed")


def after_fork() -> None:
    """Open the vault and the point here, not earlier: threads (the lock's heartbeat, the
    expiry timer, read-ahead) and the host's LMDB index must not cross a fork, and nbdkit
    accepts connections only once this returns."""
    from vmvault.export.service import ExportService, error_doc, report

    settings = _state["settings"]
    service = ExportService(settings, _state.pop("passphrase"), nbdkit.shutdown)
    try:
        service.start()
    except BaseException as exc:
        report(settings.status_fd, error_doc(exc))
        log.error("cannot start: %s", getattr(exc, "message", exc))
        raise
    _state["service"] = service
    report(settings.status_fd, {"ok": True, "expires": service.expires})


def cleanup() -> None:
    if (service := _state.pop("service", None)) is not None:
        service.close()


def open(readonly: bool) -> int:  # the name nbdkit calls (shadows the builtin here only)
    return 1  # every connection reads the same disk: the service holds all there is


def get_size(h: int) -> int:
    return int(_state["service"].reader.size)


def can_write(h: int) -> bool:
    return False


def can_multi_conn(h: int) -> bool:
    # Read-only, so every connection sees the same bytes (a writable export's cow filter
    # answers this for itself).
    return True


def is_rotational(h: int) -> bool:
    return False


def can_extents(h: int) -> bool:
    return True


def pread(h: int, buf: memoryview, offset: int, flags: int) -> None:
    from vmvault.errors import VmvaultError

    try:
        _state["service"].reader.read_into(buf, offset)
    except VmvaultError as exc:
        # Named in the log; the client gets EIO, never bytes that were not stored.
        log.error("read of %d bytes at %d failed: %s", len(buf), offset, exc.message)
        nbdkit.set_error(errno.EIO)
        raise OSError(errno.EIO, exc.message) from None


def extents(h: int, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    hole_zero = int(nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO)
    one = bool(flags & nbdkit.FLAG_REQ_ONE)
    found = _state["service"].reader.extents(offset, count, one=one)
    return [(e.start, e.length, hole_zero if e.zero else 0) for e in found]
