"""The benchmark's counting proxy (bench/countproxy.py): requests pass verbatim and are
counted by kind, with their body bytes, through keep-alive, chunked bodies, Expect:
100-continue, direct TLS and CONNECT tunnels."""

from __future__ import annotations

import http.client
import http.server
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.paths import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import countproxy


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers every request with its method, path and Host, and the body's length."""

    protocol_version = "HTTP/1.1"

    def _answer(self, body: bytes) -> None:
        text = f"{self.command} {self.path} {self.headers['Host']} {len(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:
        self._answer(b"")

    do_HEAD = do_GET
    do_DELETE = do_GET

    def do_PUT(self) -> None:
        self._answer(self._body())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_counts_by_kind_through_keep_alive(upstream: int) -> None:
    proxy = countproxy.CountingProxy(("127.0.0.1", upstream), countproxy.classify_s3).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("PUT", "/bucket/key", body=b"x" * 100_000, headers={"Expect": "100-continue"})
        assert (
            conn.getresponse().read() == f"PUT /bucket/key 127.0.0.1:{proxy.port} 100000".encode()
        )
        conn.request("PUT", "/bucket/chunked", body=iter([b"a" * 10, b"b" * 5]))  # chunked
        assert conn.getresponse().read().endswith(b" 15")
        conn.request("GET", "/bucket?list-type=2&prefix=x")
        conn.getresponse().read()
        conn.request("GET", "/bucket/key")
        conn.getresponse().read()
        conn.request("HEAD", "/bucket/key")
        conn.getresponse().read()
        conn.request("DELETE", "/bucket/key")
        conn.getresponse().read()
        conn.close()
        counts = proxy.take()
    finally:
        proxy.stop()
    assert counts.requests == {
        "GET": 1, "PUT": 2, "HEAD": 1, "LIST": 1, "DELETE": 1, "OTHER": 0
    }  # fmt: skip
    assert counts.total == 6 and counts.errors == 0
    assert counts.bytes_up >= 100_015  # the chunked body counts its framing too
    assert len(counts.log) == 6 and counts.log[0].startswith("PUT\t200\t100000\t")
    assert proxy.take().total == 0  # take() starts new counts


def test_tls_direct_and_connect_tunnel(upstream: int, tmp_path: Path) -> None:
    tls = countproxy.make_tls(tmp_path, ["account.blob.example.net", "127.0.0.1"])
    proxy = countproxy.CountingProxy(
        ("127.0.0.1", upstream), countproxy.classify_azure, tls.server_context()
    ).start()
    client_ctx = ssl.create_default_context(cafile=str(tls.ca))
    try:
        direct = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=client_ctx)
        direct.request("GET", "/account/c?restype=container&comp=list")
        assert direct.getresponse().read().startswith(b"GET /account/c?")
        direct.close()
        tunnel = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=client_ctx)
        tunnel.set_tunnel("account.blob.example.net", 443)
        tunnel.request("PUT", "/c/blob", body=b"y" * 10)
        # The Host header the client sent reaches the server unchanged.
        assert tunnel.getresponse().read() == b"PUT /c/blob account.blob.example.net 10"
        tunnel.close()
        counts = proxy.take()
    finally:
        proxy.stop()
    assert counts.requests["LIST"] == 1 and counts.requests["PUT"] == 1 and counts.total == 2


def test_classifiers() -> None:
    s3, az = countproxy.classify_s3, countproxy.classify_azure
    assert s3("GET", "/b?list-type=2&prefix=p") == "LIST"
    assert s3("GET", "/b/") == "LIST"
    assert s3("GET", "/b/packs/ab/abcd") == "GET"
    assert s3("POST", "/b?delete") == "DELETE"
    assert az("GET", "/acct/c?restype=container&comp=list&prefix=x") == "LIST"
    assert az("GET", "/c/blob") == "GET"
    assert az("PUT", "/c?restype=container") == "PUT"


def test_stop_closes_open_connections(upstream: int) -> None:
    proxy = countproxy.CountingProxy(("127.0.0.1", upstream), countproxy.classify_s3).start()
    idle = socket.create_connection(("127.0.0.1", proxy.port))
    idle.sendall(b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n")  # served, then kept alive
    idle.settimeout(5)
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")
    proxy.stop()
    # Closed by the proxy, not left hanging: what is left of the answer (the first recv
    # may have had only part of it), then the end (a hang would time out).
    while idle.recv(4096):
        pass
    idle.close()
