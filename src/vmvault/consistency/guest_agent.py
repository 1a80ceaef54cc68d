"""Freezing a live guest's file systems through the QEMU guest agent (qemu-ga).

Only the guest's kernel can freeze the guest's file systems, so vmvault asks the agent
that runs inside the guest, through the host end of its virtio-serial channel (a unix
socket). The agent speaks QMP-style JSON, one object per line, without QMP's greeting.
``qemu.qmp`` waits for that greeting or negotiates capabilities, drops the session on an
error reply that carries no id, and cannot send or read the 0xFF sentinel that puts a
channel back in step after an earlier client left it half-written; hence this small
synchronous client.

Two behaviours of the agent shape `GuestAgentFreezer`:

- ``guest-fsfreeze-freeze-list`` skips, without an error, a path that is not a mount
  point in the guest and a file system that someone else already froze, and returns how
  many it froze: the count is checked, and a short count is thawed and reported;
- an empty ``mountpoints`` list is read by some QEMU versions as "no list", which freezes
  every file system of the guest: an empty list is never sent; freezing everything is the
  explicit ``guest-fsfreeze-freeze``, used only when no mount point is named.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from vmvault.consistency.errors import FreezeError
from vmvault.consistency.freeze import FREEZE_FAILED, THAW_FAILED

UNREACHABLE = "GuestAgentUnreachable"
CONNECT_TIMEOUT = 10.0
# Freezing flushes every dirty page of the file system first: that can take a while.
FREEZE_TIMEOUT = 60.0
_SENTINEL = b"\xff"  # not valid in UTF-8 JSON: the agent resets its parser on it
_MAX_LINE = 1 << 20


class GuestAgentError(FreezeError):
    """The guest agent could not be reached (``GuestAgentUnreachable``), refused or failed
    a freeze (``FsFreezeFailed``), or did not thaw (``FsThawFailed``)."""

    code = UNREACHABLE

    def __init__(self, message: str, code: str = UNREACHABLE) -> None:
        super().__init__(message, code)


def _failure(socket_path: str, message: str, code: str = UNREACHABLE) -> GuestAgentError:
    return GuestAgentError(f"QEMU guest agent {socket_path}: {message}", code)


class GuestAgent:
    """One connection to a guest agent's socket, in step with it (``guest-sync-delimited``).

    ``execute`` returns the command's ``return`` value; an error reply raises
    `GuestAgentError` with code ``FsFreezeFailed`` and the agent's message, a dead or
    silent agent one with code ``GuestAgentUnreachable``.
    """

    def __init__(self, socket_path: str, *, timeout: float = CONNECT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._buffer = b""
        self._limit = timeout  # of the exchange under way, for the error message
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connect(time.monotonic() + timeout)
            self._sync()
        except BaseException:
            self._sock.close()
            raise

    def _error(self, message: str, code: str = UNREACHABLE) -> GuestAgentError:
        return _failure(self.socket_path, message, code)

    def _connect(self, deadline: float) -> None:
        """Connect; an agent serves one client at a time, so wait while it is busy."""
        while True:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                self._sock.connect(self.socket_path)
                return
            except BlockingIOError:
                # A unix socket's backlog is full (the agent is serving someone else):
                # a socket with a timeout gets EAGAIN at once instead of waiting.
                if time.monotonic() >= deadline:
                    raise self._error(
                        f"cannot connect: busy with another client for {self.timeout:g} s"
                    ) from None
                time.sleep(0.05)
            except OSError as exc:
                raise self._error(f"cannot connect: {exc.strerror or exc}") from None

    def _sync(self) -> None:
        """Discard whatever an earlier client left in the channel, then agree on a token."""
        token = secrets.randbelow(1 << 31)
        self._limit = self.timeout
        deadline = time.monotonic() + self._limit
        self._send_raw(_SENTINEL)
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        # Before the agent's own 0xFF comes only stale data: replies meant for an earlier
        # client and the parse error that our 0xFF provokes.
        while _SENTINEL not in self._buffer:
            self._buffer = b""
            self._fill(deadline, "guest-sync-delimited")
        self._buffer = self._buffer.split(_SENTINEL, 1)[1]
        while True:
            line = self._line(deadline, "guest-sync-delimited").lstrip(_SENTINEL)
            try:
                reply = json.loads(line)
            except ValueError:
                continue  # a stale fragment
            if isinstance(reply, dict) and reply.get("return") == token:
                return

    def execute(
        self,
        command: str,
        arguments: Mapping[str, object] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Run one command; return its ``return`` value."""
        request: dict[str, object] = {"execute": command}
        if arguments is not None:
            request["arguments"] = dict(arguments)
        self._limit = timeout or self.timeout
        deadline = time.monotonic() + self._limit
        self._send(request)
        line = self._line(deadline, command)
        try:
            reply = json.loads(line)
        except ValueError:
            raise self._error(f"{command}: not a JSON reply: {line[:80]!r}") from None
        if not isinstance(reply, dict):
            raise self._error(f"{command}: unexpected reply {reply!r}")
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            desc = error.get("desc") or error.get("class") or "unknown error"
            raise self._error(f"{command} failed: {desc}", FREEZE_FAILED)
        if "return" not in reply:
            raise self._error(f"{command}: unexpected reply {reply!r}")
        return reply["return"]

    def close(self) -> None:
        self._sock.close()

    def _send(self, message: Mapping[str, object]) -> None:
        self._send_raw(json.dumps(message).encode() + b"\n")

    def _send_raw(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._error(f"connection lost: {exc.strerror or exc}") from None

    def _silent(self, command: str) -> GuestAgentError:
        message = f"no answer to {command} within {self._limit:g} s"
        if command == "guest-sync-delimited":
            # The socket accepts connections even when nobody reads them.
            message += " (is the agent running in the guest? is another client connected?)"
        return self._error(message)

    def _line(self, deadline: float, command: str) -> bytes:
        while b"\n" not in self._buffer:
            if len(self._buffer) > _MAX_LINE:
                raise self._error(f"{command}: reply longer than {_MAX_LINE} bytes")
            self._fill(deadline, command)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _fill(self, deadline: float, command: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._silent(command)
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            raise self._silent(command) from None
        except OSError as exc:
            raise self._error(f"connection lost: {exc.strerror or exc}") from None
        if not data:
            raise self._error(f"the agent closed the connection during {command}")
        self._buffer += data


class GuestAgentFreezer:
    """Freeze a live guest's file systems through its guest agent; thaw them afterwards.

    ``mountpoints`` are paths inside the guest (``guest-fsfreeze-freeze-list``); none
    means every file system of the guest (``guest-fsfreeze-freeze``). The connection
    stays open from freeze to thaw: an agent serves one client at a time, so nobody else
    can thaw or re-freeze in between. A thaw that fails on that connection is retried once
    on a new one (the channel may have broken while the guest was frozen).
    """

    def __init__(
        self,
        socket_path: str,
        mountpoints: Sequence[str] = (),
        *,
        timeout: float = CONNECT_TIMEOUT,
        freeze_timeout: float = FREEZE_TIMEOUT,
    ) -> None:
        for path in mountpoints:
            if not posixpath.isabs(path):
                raise ValueError(f"guest mount point {path!r} is not an absolute path")
        # The agent compares paths as strings with the guest's mount table: "/srv/" or
        # "/srv//data" would match nothing.
        self.mountpoints = list(dict.fromkeys(posixpath.normpath(p) for p in mountpoints))
        self.socket_path = socket_path
        self.timeout = timeout
        self.freeze_timeout = freeze_timeout
        self._agent: GuestAgent | None = None
        self._frozen = False

    def describe(self) -> str:
        what = ", ".join(self.mountpoints) or "all guest file systems"
        return f"QEMU guest agent {self.socket_path}: freeze of {what}"

    def status(self) -> str:
        """What the agent says: ``"frozen"`` or ``"thawed"``."""
        return str(self._connection().execute("guest-fsfreeze-status"))

    def freeze(self) -> str:
        """Freeze; return a note naming the guest agent and what it froze.

        On failure nothing stays frozen (what was frozen is thawed) and `GuestAgentError`
        is raised.
        """
        if self._frozen:
            raise GuestAgentError(f"{self.describe()}: already frozen", FREEZE_FAILED)
        try:
            agent = self._connection()
            state = agent.execute("guest-fsfreeze-status")
            if state != "thawed":
                # Not ours to thaw: another tool (or an interrupted backup) froze the guest.
                raise _failure(
                    self.socket_path,
                    f"the guest's file systems are already {state}; "
                    "thaw them with guest-fsfreeze-thaw first",
                    FREEZE_FAILED,
                )
            self._frozen = True  # from here on, whatever goes wrong ends in a thaw
            if self.mountpoints:
                count = agent.execute(
                    "guest-fsfreeze-freeze-list",
                    {"mountpoints": self.mountpoints},
                    timeout=self.freeze_timeout,
                )
                if count != len(self.mountpoints):
                    raise _failure(
                        self.socket_path,
                        f"froze {count} of {len(self.mountpoints)} file systems "
                        f"({', '.join(self.mountpoints)}): a path that is not a mount point "
                        "in the guest, or a file system that is already frozen",
                        FREEZE_FAILED,
                    )
                what = ", ".join(self.mountpoints)
            else:
                count = agent.execute("guest-fsfreeze-freeze", timeout=self.freeze_timeout)
                if not isinstance(count, int) or count < 1:
                    raise _failure(self.socket_path, "froze no file system", FREEZE_FAILED)
                what = f"all {count} guest file systems"
        except GuestAgentError as exc:
            message = exc.message
            if self._frozen:
                try:
                    self.thaw()
                except GuestAgentError as undo:
                    message += f"; and then {undo.message}"
            self._disconnect()
            raise GuestAgentError(message, exc.code) from None
        return f"QEMU guest agent: {what}"

    def thaw(self) -> None:
        """Thaw what ``freeze`` froze; safe to call twice; a failure can be retried."""
        if not self._frozen:
            return
        problems = []
        for _attempt in range(2):
            try:
                agent = self._connection()
                agent.execute("guest-fsfreeze-thaw", timeout=self.freeze_timeout)
                state = agent.execute("guest-fsfreeze-status")
            except GuestAgentError as exc:
                problems.append(exc.message)
                self._disconnect()
                continue
            if state == "thawed":
                self._frozen = False
                self._disconnect()
                return
            problems.append(_failure(self.socket_path, f"still {state} after a thaw").message)
        raise GuestAgentError("cannot thaw: " + "; ".join(dict.fromkeys(problems)), THAW_FAILED)

    def _connection(self) -> GuestAgent:
        if self._agent is None:
            self._agent = GuestAgent(self.socket_path, timeout=self.timeout)
        return self._agent

    def _disconnect(self) -> None:
        agent, self._agent = self._agent, None
        if agent is not None:
            with contextlib.suppress(OSError):
                agent.close()
