"""A counting HTTP reverse proxy between a backup tool and an object store, for the benchmark.

Every request is forwarded verbatim (request line, headers, Host included, and body) to one
upstream server, so signed requests (S3's SigV4, Azure's shared key) still verify there, and
the answer comes back verbatim. On the way it counts requests by kind (GET, PUT, HEAD, LIST,
DELETE, other) and the body bytes each way. Both tools go through the same proxy, so their
counts are taken the same way, from the outside.

One listener takes three kinds of client:

- plain HTTP (an ``http://`` endpoint naming the proxy);
- TLS straight away (an ``https://`` endpoint naming the proxy): the proxy terminates TLS with
  its own certificate (``make_tls``) and talks plain HTTP upstream;
- ``CONNECT host:443`` (a client told ``HTTPS_PROXY=http://proxy``), then TLS inside the
  tunnel, terminated the same way: how a client with a fixed ``https://`` endpoint (restic's
  Azure backend) is brought to a local server. CONNECT itself is not counted.

A thread per client connection, one upstream connection each (kept alive while both sides
allow). ``Expect: 100-continue`` is answered by the proxy itself; the upstream's own interim
answers are dropped. Standard library only, plus ``cryptography`` for the certificate.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

KINDS = ("GET", "PUT", "HEAD", "LIST", "DELETE", "OTHER")
BUFFER = 1 << 20
MAX_LINE = 65536


def classify_s3(method: str, target: str) -> str:
    """S3 (path-style): a GET of a bucket (no key) or with list-type= is a listing."""
    parts = urlsplit(target)
    if method == "GET":
        key = parts.path.lstrip("/").partition("/")[2]
        if not key or "list-type=" in parts.query or "uploads" in parts.query:
            return "LIST"
        return "GET"
    if method == "POST" and "delete" in parts.query.split("&"):
        return "DELETE"  # DeleteObjects: one request for up to 1000 keys
    return method if method in KINDS else "OTHER"


def classify_azure(method: str, target: str) -> str:
    """Azure Blob: ``comp=list`` is a listing (List Blobs, List Containers)."""
    query = urlsplit(target).query.split("&")
    if method == "GET" and "comp=list" in query:
        return "LIST"
    if method == "POST" and "comp=batch" in query:
        return "DELETE"  # a blob batch (restic and vmvault send none, but count it)
    return method if method in KINDS else "OTHER"


@dataclass
class Counts:
    """Requests by kind, body bytes up (to the store) and down, and answers >= 400."""

    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    bytes_up: int = 0
    bytes_down: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # one line per request, in order

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": dict(self.requests),
            "total": self.total,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "errors": self.errors,
            "statuses": dict(self.statuses),
        }


def _reader(sock: socket.socket) -> io.BufferedReader:
    """A buffered reader of the socket (TLS or not): lines for heads, read1 for bodies."""
    return io.BufferedReader(socket.SocketIO(sock, "rb"), BUFFER)


def _read_head(stream: io.BufferedReader) -> list[bytes]:
    """The start line and header lines of one message, raw (CRLF kept); [] at a clean EOF."""
    lines: list[bytes] = []
    while True:
        line = stream.readline(MAX_LINE)
        if not line:
            if lines:
                raise ConnectionError("connection closed inside a message head")
            return []
        if not lines and line in (b"\r\n", b"\n"):
            continue  # stray CRLF between messages
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return lines
        if len(lines) > 200:
            raise ConnectionError("too many header lines")


def _headers(lines: list[bytes]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lines[1:-1]:
        name, _, value = line.decode("latin-1").partition(":")
        found[name.strip().lower()] = value.strip()
    return found


def _relay_body(
    src: io.BufferedReader, dst: socket.socket | None, headers: dict[str, str], *, until_close: bool
) -> int:
    """Copy one message body from ``src`` to ``dst`` as it is framed; returns its length
    (chunked bodies: the bytes on the wire, chunk framing included)."""
    total = 0

    def send(data: bytes) -> None:
        if dst is not None:
            dst.sendall(data)

    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = src.readline(MAX_LINE)
            if not size_line:
                raise ConnectionError("connection closed inside a chunked body")
            send(size_line)
            total += len(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = src.readline(MAX_LINE)
                    if not trailer:
                        raise ConnectionError("connection closed inside chunk trailers")
                    send(trailer)
                    total += len(trailer)
                    if trailer in (b"\r\n", b"\n"):
                        return total
            total += _relay_exact(src, send, size + 2)  # the chunk and its CRLF
    if "content-length" in headers:
        return _relay_exact(src, send, int(headers["content-length"]))
    if until_close:
        while data := src.read1(BUFFER):
            send(data)
            total += len(data)
    return total


def _relay_exact(src: io.BufferedReader, send: Callable[[bytes], None], left: int) -> int:
    done = 0
    while left > 0:
        data = src.read1(min(left, BUFFER))
        if not data:
            raise ConnectionError("connection closed inside a body")
        send(data)
        left -= len(data)
        done += len(data)
    return done


def _wants_close(headers: dict[str, str], version: bytes) -> bool:
    connection = headers.get("connection", "").lower()
    return "close" in connection or (version == b"HTTP/1.0" and "keep-alive" not in connection)


class CountingProxy:
    """Listens on 127.0.0.1 (a free port); forwards to ``upstream`` (host, port) over HTTP.

    ``classify`` names a request's kind from its method and target; ``tls`` (a server-side
    SSLContext) enables direct TLS and CONNECT tunnels. ``take()`` returns the counts since
    the last ``take()`` and starts new ones: the benchmark takes them around each step."""

    def __init__(
        self,
        upstream: tuple[str, int],
        classify: Callable[[str, str], str],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.upstream = upstream
        self.classify = classify
        self.tls = tls
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # no request in flight
        self._inflight = 0
        self._counts = Counts()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = False
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="countproxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):  # wakes the accept() below (close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    def take(self, settle: float = 5.0) -> Counts:
        """The counts so far, and new ones from here. A request is recorded after its
        answer was relayed, so a client may have its answer first: wait (up to
        ``settle`` s) until no request is in flight, or a step's last request could be
        counted in the next."""
        with self._lock:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=settle)
            counts, self._counts = self._counts, Counts()
        return counts

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _record(self, kind: str, target: str, up: int, down: int, status: int) -> None:
        line = f"{kind}\t{status}\t{up}\t{down}\t{target}"
        with self._lock:
            c = self._counts
            c.log.append(line)
            c.requests[kind] = c.requests.get(kind, 0) + 1
            c.bytes_up += up
            c.bytes_down += down
            key = str(status)
            c.statuses[key] = c.statuses.get(key, 0) + 1
            if status >= 400:
                c.errors += 1

    def _serve(self, conn: socket.socket) -> None:
        raw = conn
        with self._lock:
            self._conns.add(raw)
        upstream: socket.socket | None = None
        try:
            if self._stopping:  # accepted while stop() was closing the others
                return
            if self.tls is not None and conn.recv(1, socket.MSG_PEEK) == b"\x16":
                conn = self.tls.wrap_socket(conn, server_side=True)  # a TLS ClientHello
            client = _reader(conn)
            up_stream: io.BufferedReader | None = None
            while True:
                head = _read_head(client)
                if not head:
                    return
                method, target, version = head[0].rstrip(b"\r\n").split(b" ", 2)
                headers = _headers(head)
                if method == b"CONNECT":
                    if self.tls is None:
                        conn.sendall(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                        return
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    conn = self.tls.wrap_socket(conn, server_side=True)
                    client = _reader(conn)
                    continue
                with self._lock:
                    self._inflight += 1
                try:
                    if upstream is None:
                        upstream = socket.create_connection(self.upstream)
                        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        up_stream = _reader(upstream)
                    assert up_stream is not None
                    if "100-continue" in headers.get("expect", "").lower():
                        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    upstream.sendall(b"".join(head))
                    sent = _relay_body(client, upstream, headers, until_close=False)
                    while True:  # the upstream's 100 Continue (and any 1xx) stays here
                        answer = _read_head(up_stream)
                        if not answer:
                            raise ConnectionError("upstream closed without an answer")
                        status = int(answer[0].split(b" ", 2)[1])
                        if status >= 200 or status == 101:
                            break
                    answer_headers = _headers(answer)
                    conn.sendall(b"".join(answer))
                    no_body = method == b"HEAD" or status in (204, 304)
                    got = (
                        0
                        if no_body
                        else _relay_body(up_stream, conn, answer_headers, until_close=True)
                    )
                    kind = self.classify(method.decode("ascii"), target.decode("latin-1"))
                    self._record(kind, target.decode("latin-1"), sent, got, status)
                finally:
                    with self._lock:
                        self._inflight -= 1
                        self._idle.notify_all()
                if _wants_close(answer_headers, answer[0][:8]) or (
                    not no_body
                    and "content-length" not in answer_headers
                    and "chunked" not in answer_headers.get("transfer-encoding", "")
                ):
                    upstream.close()
                    upstream, up_stream = None, None
                if _wants_close(headers, version):
                    return
        except (OSError, ValueError, IndexError, ConnectionError, ssl.SSLError):
            return  # a broken connection: the tool sees it and reports it
        finally:
            with self._lock:
                self._conns.discard(raw)
            for sock in (conn, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()


@dataclass
class TlsFiles:
    """A throw-away CA (give ``ca`` to the clients) and the proxy's certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.set_alpn_protocols(["http/1.1"])  # no HTTP/2: the proxy speaks HTTP/1.1
        return ctx


def make_tls(folder: Path, names: list[str]) -> TlsFiles:
    """A CA and a certificate it signs for ``names`` (DNS names, wildcards, IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmvault bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "proxy.pem", folder / "proxy-key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files
