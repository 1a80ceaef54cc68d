"""Who is using the vault: lock objects with heartbeats.

Backups and restores hold a lock object (``locks/<kind>-<id>``) for as long as they run and
refresh it every minute. Garbage collection reads them: it deletes nothing while any live
lock exists. A lock whose heartbeat is older than ``STALE_AFTER`` belongs to a process that
died (kill -9, host crash) and is ignored, so a crash never blocks collection forever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from vmvault.backends.base import Backend
from vmvault.errors import ObjectMissing, VmvaultError

LOCK_PREFIX = "locks/"
HEARTBEAT = 60.0
STALE_AFTER = 600.0
log = logging.getLogger("vmvault")


@dataclass(frozen=True)
class LockInfo:
    key: str
    kind: str
    started: float
    heartbeat: float
    host: str
    tags: tuple[str, ...] = ()


class VaultLock:
    """A shared lock held by one backup or restore; a context manager."""

    def __init__(
        self,
        backend: Backend,
        kind: str,
        *,
        tags: list[str] | None = None,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.backend = backend
        self.kind = kind
        self.tags = tags or []  # opaque (keyed hashes): what the job touches, e.g. its pools
        self.key = f"{LOCK_PREFIX}{kind}-{secrets.token_hex(8)}"
        self.started = time.time()
        self._interval = heartbeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="vault-lock", daemon=True)

    def _write(self) -> None:
        doc = {
            "kind": self.kind,
            "started": self.started,
            "heartbeat": time.time(),
            "host": socket.gethostname(),
            "tags": self.tags,
        }
        self.backend.put(self.key, json.dumps(doc).encode())

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._write()
            except (OSError, VmvaultError):  # a full or failing store must not stop the
                continue  # heartbeat for good: the next beat tries again

    def __enter__(self) -> VaultLock:
        try:
            self._write()
        except BaseException:
            # The object may be stored all the same (the answer was lost): a lock nobody
            # holds would hold off garbage collection until it went stale.
            with contextlib.suppress(Exception):
                self.backend.delete(self.key)
            raise
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.backend.delete(self.key)
        except (OSError, VmvaultError) as failure:
            # The job's work is done (or its own error is on its way): a lock left behind
            # only holds off garbage collection until it goes stale. When the job itself
            # failed because the store stopped answering, that error says it all: the
            # lock's fate is no second line beside it.
            store_down = getattr(exc, "code", None) == "backend_unavailable"
            log.log(
                logging.INFO if store_down else logging.WARNING,
                "warning: could not release the lock %s (%s); it goes stale in %d minutes",
                self.key,
                getattr(failure, "message", failure),
                STALE_AFTER // 60,
            )


def live_locks(backend: Backend, now: float | None = None) -> list[LockInfo]:
    """Locks whose holder has shown a sign of life within ``STALE_AFTER`` seconds."""
    now = time.time() if now is None else now
    found = []
    for key in backend.list(LOCK_PREFIX):
        try:
            doc = json.loads(backend.get(key))
            info = LockInfo(
                key,
                str(doc["kind"]),
                float(doc["started"]),
                float(doc["heartbeat"]),
                str(doc.get("host", "")),
                tuple(str(t) for t in doc.get("tags", [])),
            )
        except ObjectMissing:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError):
            # Unreadable (damaged, or a foreign writer): its holder may well be running, so
            # it counts as live until its object is as old as a stale heartbeat would be.
            try:
                written = backend.modified(key)
            except ObjectMissing:
                continue
            info = LockInfo(key, "unknown", written, written, "")
        if now - info.heartbeat <= STALE_AFTER:
            found.append(info)
    return found
