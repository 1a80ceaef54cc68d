"""A small synchronous QMP client for a running QEMU's monitor socket.

``qemu.qmp.QMPClient`` is asyncio-only. The rest of vmvault is synchronous and may be
called from a thread that already runs an event loop (an async API handler), where
``loop.run_until_complete`` would fail. So the client lives on a private event loop in a
daemon thread of its own, and every call is handed over with
``asyncio.run_coroutine_threadsafe`` and waited for with a timeout: a QEMU that hangs or
dies turns into an error, never into a backup that waits forever.

Errors are ``QmpError`` (a ``SnapshotError``): one line naming the command and QEMU's
own message, which is what a user needs to act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, TypeVar

from qemu.qmp import (
    ConnectError,
    ExecInterruptedError,
    ExecuteError,
    QMPClient,
    QMPError,
    StateError,
)

from vmvault.snapshot.base import SnapshotError

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


class QmpError(SnapshotError):
    code = "qmp_failed"


class QmpCommandError(QmpError):
    """QEMU answered a command with an error; ``error_class`` is QEMU's (e.g. GenericError)."""

    def __init__(self, message: str, error_class: str) -> None:
        super().__init__(message)
        self.error_class = error_class


class QmpConnection:
    """One QMP session: ``execute`` commands, pass file descriptors, ``close``.

    A QMP monitor serves one client at a time; a second client is left waiting for the
    greeting, which is why connecting has a timeout and says so.
    """

    def __init__(self, socket_path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="vmvault-qmp", daemon=True
        )
        self._thread.start()
        self._client: QMPClient | None = None
        try:
            self._client = self._run(self._connect(), timeout)
        except BaseException:
            self._stop_loop()
            raise

    async def _connect(self) -> QMPClient:
        # Created on the loop's own thread: its queues and events belong to that loop.
        client = QMPClient("vmvault")
        try:
            await client.connect(self.socket_path)
        except ConnectError as exc:
            raise QmpError(
                f"cannot connect to QEMU's QMP socket {self.socket_path}: {exc.exc or exc}"
            ) from None
        return client

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise QmpError(
                f"QEMU did not answer on {self.socket_path} within {timeout:.0f} s "
                "(is another QMP client connected to this monitor?)"
            ) from None

    def execute(
        self,
        command: str,
        arguments: Mapping[str, object] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Run one QMP command and return its ``return`` value."""
        client = self._require()

        async def call() -> object:
            try:
                return await client.execute(command, arguments)
            except ExecuteError as exc:
                raise QmpCommandError(
                    f"QMP {command} failed: {exc.error.error.desc}", exc.error.error.class_
                ) from None
            except (StateError, ExecInterruptedError):
                raise QmpError(
                    f"QMP {command} failed: QEMU closed the connection on {self.socket_path} "
                    "(did the VM stop?)"
                ) from None
            except QMPError as exc:
                raise QmpError(f"QMP {command} failed: {type(exc).__name__}: {exc}") from None

        return self._run(call(), timeout or self.timeout)

    def send_fd(self, fd: int) -> None:
        """Pass ``fd`` to QEMU (SCM_RIGHTS); the next ``getfd``/``add-fd`` command takes it.

        QEMU may run as another user or under a confining security profile, so it is
        handed files that vmvault opened rather than paths it would have to open itself.
        """
        client = self._require()

        async def send() -> None:
            client.send_fd_scm(fd)

        self._run(send(), self.timeout)

    def _require(self) -> QMPClient:
        if self._client is None:
            raise QmpError(f"the QMP connection to {self.socket_path} is closed")
        return self._client

    def close(self) -> None:
        """Disconnect and stop the loop thread; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            # A dead QEMU: nothing left to say goodbye to.
            with contextlib.suppress(Exception):
                self._run(client.disconnect(), 5.0)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> QmpConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
