"""How an export ends on time: at its expiry, or when `vmvault export --stop` asks.

nbdkit 1.32 shuts down gracefully: once asked (``nbdkit.shutdown()``, or SIGTERM), it
accepts no new client but waits for the connected ones to leave, and a client that sits
idle (QEMU with the disk attached, a mounted file system) never does; measured: SIGTERM
with QEMU attached ended nbdkit only when QEMU quit. So the watchdog, once the end has
come, asks nbdkit to shut down and then ends the NBD connections itself: it shuts down
(``shutdown(2)``, both ways) the sockets of this process that nbdkit accepted on the
export's address, which nbdkit's connection threads read as the client leaving. nbdkit
then exits as usual and the plugin's cleanup releases the vault's lock.

An export bound to a process (an instant VM's QEMU: ``launch.bind_export`` writes its
owner file) no longer expires: it ends when that process is gone, so it is neither cut
from under a running VM nor left behind by one that stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vmvault.export.state import owner_alive

log = logging.getLogger("vmvault")
INTERVAL = 0.5  # seconds between looks at the clock and for a stop request


def disconnect_clients(socket_path: str | None, port: int | None) -> int:
    """Shut down this process's connected sockets on the export's Unix socket path or TCP
    port (never the listening one, nor a connection of the vault's own, to S3 say);
    how many."""
    ended = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            conn = socket.socket(fileno=os.dup(int(name)))  # a duplicate: closing it is ours
        except (OSError, ValueError):
            continue  # closed meanwhile
        with conn:
            try:
                if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                local = conn.getsockname()
                if conn.family == socket.AF_UNIX:
                    ours = socket_path is not None and local == socket_path
                elif conn.family in (socket.AF_INET, socket.AF_INET6):
                    ours = port is not None and local[1] == port
                else:
                    ours = False
                if ours:
                    conn.shutdown(socket.SHUT_RDWR)
                    ended += 1
            except OSError:
                continue
    return ended


class Watchdog:
    """A thread that ends the export at ``expires`` (epoch seconds) or once
    ``stop_request`` exists: ``shutdown`` (nbdkit's), then the clients disconnected, again
    at each look while the process lives (a client may be mid-reply the first time)."""

    def __init__(
        self,
        expires: float,
        stop_request: Path | None,
        shutdown: Callable[[], None],
        *,
        socket_path: str | None,
        port: int | None,
        owner: Path | None = None,
    ) -> None:
        self.expires = expires
        self.stop_request = stop_request
        self.owner = owner
        self._shutdown = shutdown
        self._socket_path = socket_path
        self._port = port
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="export-watchdog", daemon=True)
        self.reason: str | None = None

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(INTERVAL):
            if self.reason is None:
                owned = owner_alive(self.owner) if self.owner is not None else None
                if owned is False:
                    self.reason = "its owner process ended"
                elif owned is None and time.time() >= self.expires:
                    self.reason = "expired"
                elif self.stop_request is not None and self.stop_request.exists():
                    self.reason = "stop requested"
                else:
                    continue
                log.info("%s: ending the export", self.reason)
                self._shutdown()
            ended = disconnect_clients(self._socket_path, self._port)
            if ended:
                log.info("disconnected %d client(s)", ended)

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
