"""An HTTP reverse proxy that fails like a real object store's front end, for tests.

``FaultProxy(upstream)`` listens on loopback and forwards each request to the S3 server at
``upstream`` verbatim: the same method, path and query, the same headers in the same order
(the ``Host`` header as the client sent it: SigV4 signs it, and the server checks the
signature against the Host it receives), the same body bytes (a chunked body is passed on
still chunked). The answer comes back with its status and headers; only hop-by-hop headers
(``Connection``, ``Keep-Alive``, ``Expect``) are the proxy's own. boto3 does not sign those.

By configuration it fails some requests instead, as a store's load balancer does:

- ``fail_every(n, *faults)``: every n-th request (counted across all clients; or only those
  of some ``methods``) gets the next fault of ``faults`` in turn:
  ``"503"``, answered ``503 SlowDown`` with an S3 XML error body, never forwarded;
  ``"reset-request"``, the connection reset after half the request's body was read (before
  anything reached the store); ``"reset-response"``, the request forwarded and done by the
  store, then the connection reset half-way through sending its answer (a put that stored
  the object, whose success the client never hears).
- ``down()`` / ``up()``: while down, every request's connection is reset at once and
  nothing is forwarded; ``up()`` resumes. An upstream that refuses connections (a killed
  store) is passed on the same way: the client's connection is reset.
- ``slow(latency, rate)``: each forwarded request waits ``latency`` seconds, and as long
  as its body would take at ``rate`` bytes per second, before it goes on: one connection's
  round trip and throughput to a distant store (each connection is slowed on its own, as
  TCP streams are; bench/s3_uploads.py uses it).
- ``on_forwarded``: called with each forwarded request's ``Seen`` once its answer is sent
  (a test kills the store after the n-th pack was stored, from inside the request's thread).

It counts every request by method (``counts``) and logs each one (``seen``): its number,
method, path, the fault it got, the store's status, and its body's size.

Threads and ``http.client``, standard library only: one thread per client connection, each
with its own keep-alive connection to the store.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("503", "reset-request", "reset-response")
# Hop-by-hop: they describe one connection, so the proxy speaks for itself on each side.
# ``Expect: 100-continue`` is answered by the proxy (http.server does it); boto3 signs none.
_HOP = frozenset({"connection", "keep-alive", "expect", "proxy-connection", "te", "upgrade"})
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<Resource>{resource}</Resource><RequestId>faultproxy</RequestId></Error>"
)
UPSTREAM_TIMEOUT = 60.0


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    number: int  # 1-based, across all clients
    method: str
    path: str  # without the query
    query: str
    fault: str | None  # "503", "reset-request", "reset-response", "down", "upstream-down"
    status: int | None  # the store's answer, when it was forwarded and answered
    body: int  # bytes of the request body read (all of it, unless reset half-way)

    @property
    def forwarded(self) -> bool:
        return self.status is not None

    @property
    def ok(self) -> bool:
        """Forwarded, answered 2xx, and the whole answer reached the client."""
        return self.status is not None and 200 <= self.status < 300 and self.fault is None


class FaultProxy:
    """A fault-injecting reverse proxy on ``127.0.0.1``; a context manager (see module doc)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._every = 0
        self._faults: tuple[str, ...] = ()
        self._faulted = 0
        self._countdown = 0
        self._methods: frozenset[str] = frozenset()
        self._down = False
        self._latency = 0.0
        self._rate: float | None = None
        self._number = 0
        self._seen: list[Seen] = []
        self.counts: Counter[str] = Counter()  # method -> requests received
        self.on_forwarded: Callable[[Seen], None] | None = None
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="faultproxy", daemon=True
        )
        self._thread.start()

    # -- configuration --------------------------------------------------------------------

    @property
    def upstream(self) -> str:
        return self._upstream

    @upstream.setter
    def upstream(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://HOST:PORT, not {url!r}")
        self._upstream = url
        self._address = (parts.hostname, parts.port)

    def fail_every(self, n: int, *faults: str, methods: Iterable[str] = ()) -> None:
        """Fail every ``n``-th request from now on (0: none) with ``faults`` in turn;
        with ``methods``, every ``n``-th request of those methods (the others pass)."""
        unknown = set(faults) - set(FAULTS)
        if unknown or (n and not faults):
            raise ValueError(f"faults must be some of {FAULTS}, not {faults}")
        with self._lock:
            self._every, self._faults, self._faulted = n, tuple(faults), 0
            self._methods = frozenset(methods)
            self._countdown = n

    def slow(self, latency: float = 0.0, rate: float | None = None) -> None:
        """Delay each forwarded request by ``latency`` s plus its body's size / ``rate``."""
        with self._lock:
            self._latency, self._rate = latency, rate

    def _delay(self, body: int) -> float:
        with self._lock:
            return self._latency + (body / self._rate if self._rate else 0.0)

    def down(self) -> None:
        """Stop forwarding: every request's connection is reset until ``up()``."""
        with self._lock:
            self._down = True

    def up(self) -> None:
        with self._lock:
            self._down = False

    @property
    def is_down(self) -> bool:
        return self._down

    # -- what was seen --------------------------------------------------------------------

    def seen(self, method: str | None = None, under: str | None = None) -> list[Seen]:
        """Requests so far, optionally of one method and with paths containing ``under``."""
        with self._lock:
            return [
                s
                for s in self._seen
                if (method is None or s.method == method) and (under is None or under in s.path)
            ]

    def reset_counts(self) -> None:
        with self._lock:
            self._seen.clear()
            self.counts.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_all()
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by the handler --------------------------------------------------------------

    def _admit(self, method: str) -> tuple[int, str | None]:
        """Count a request; its number and the fault it gets (None: forward it)."""
        with self._lock:
            self._number += 1
            self.counts[method] += 1
            if self._down:
                return self._number, "down"
            if self._every and (not self._methods or method in self._methods):
                self._countdown -= 1
                if self._countdown == 0:
                    self._countdown = self._every
                    fault = self._faults[self._faulted % len(self._faults)]
                    self._faulted += 1
                    return self._number, fault
            return self._number, None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        """Reset the clients' keep-alive connections still open: their threads end."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server or a cut link does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's pool expects
    server: _Server
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the proxy's log is ``seen``

    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # a reset socket has nothing to flush
            super().finish()
        if self._upstream is not None:
            self._upstream.close()

    # -- one request ----------------------------------------------------------------------

    def _proxy(self) -> None:
        proxy = self.server.proxy
        number, fault = proxy._admit(self.command)
        path, _, query = self.path.partition("?")

        def record(fault: str | None, status: int | None, body: int) -> Seen:
            seen = Seen(number, self.command, path, query, fault, status, body)
            proxy._record(seen)
            return seen

        if fault == "down":
            record(fault, None, 0)
            self._reset()
            return
        try:
            if fault == "reset-request":
                record(fault, None, self._read_half_body())
                self._reset()
                return
            body = self._read_body()
            if fault == "503":
                record(fault, None, len(body))
                self._answer_slow_down(path)
                return
            delay = proxy._delay(len(body))
            if delay:
                time.sleep(delay)
            try:
                status, head, payload = self._forward(body)
            except OSError:  # the store is gone (killed, refusing): as if it had no proxy
                record("upstream-down", None, len(body))
                self._reset()
                return
            response = head + payload
            if fault == "reset-response":
                record(fault, status, len(body))
                self.wfile.write(response[: len(response) // 2])
                self._reset()
                return
            self.wfile.write(response)
            seen = record(None, status, len(body))
        except OSError:  # the client went away
            self.close_connection = True
            return
        if proxy.on_forwarded is not None:
            proxy.on_forwarded(seen)

    def _reset(self) -> None:
        self.close_connection = True
        _reset(self.connection)

    def _content_length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _read_body(self) -> bytes:
        """The request body as it came on the wire (chunked framing kept)."""
        if not self._chunked():
            return self.rfile.read(self._content_length())
        raw = bytearray()
        while True:
            line = self.rfile.readline(65537)
            raw += line
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = self.rfile.readline(65537)
                    raw += trailer
                    if trailer in (b"\r\n", b"\n", b""):
                        return bytes(raw)
            raw += self.rfile.read(size + 2)  # the chunk and its CRLF

    def _read_half_body(self) -> int:
        """Read half of a sized body (none of a chunked one): a request cut mid-way."""
        half = self._content_length() // 2 if not self._chunked() else 0
        return len(self.rfile.read(half)) if half else 0

    def _answer_slow_down(self, path: str) -> None:
        body = SLOW_DOWN.replace(b"{resource}", path.encode())
        head = (
            "HTTP/1.1 503 Slow Down\r\n"
            "Content-Type: application/xml\r\n"
            f"Content-Length: {len(body) if self.command != 'HEAD' else 0}\r\n"
            "Retry-After: 1\r\n"
            "\r\n"
        ).encode()
        self.wfile.write(head + (body if self.command != "HEAD" else b""))

    def _forward(self, body: bytes) -> tuple[int, bytes, bytes]:
        """Send the request to the store; its status, serialized head and body."""
        proxy = self.server.proxy
        for attempt in (1, 2):
            conn = self._upstream
            if conn is None:
                host, port = proxy._address
                conn = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT)
                self._upstream = conn
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():  # in order, Host included
                    if name.lower() not in _HOP:
                        conn.putheader(name, value)
                conn.endheaders(body or None)
                answer = conn.getresponse()
                payload = answer.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the store had closed while idle: tried once more
                # on a fresh one (as urllib3 does); a store that is gone fails again.
                conn.close()
                self._upstream = None
                if attempt == 2:
                    raise
            except OSError:
                conn.close()
                self._upstream = None
                raise
        if answer.will_close:
            conn.close()
            self._upstream = None
        return answer.status, _head(answer, payload, self.command), payload


def _head(answer: http.client.HTTPResponse, payload: bytes, method: str) -> bytes:
    """The answer's status line and headers as the client gets them: the store's, except
    the framing (the body was read whole, so it goes with a Content-Length)."""
    lines = [f"HTTP/1.1 {answer.status} {answer.reason}"]
    framing = {"content-length", "transfer-encoding"}
    headers: Iterable[tuple[str, str]] = answer.getheaders()
    for name, value in headers:
        lower = name.lower()
        if lower in _HOP or (lower in framing and method != "HEAD"):
            continue  # a HEAD answer keeps the store's Content-Length: it is the object's
        lines.append(f"{name}: {value}")
    if method != "HEAD" and answer.status not in (204, 304):
        lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
