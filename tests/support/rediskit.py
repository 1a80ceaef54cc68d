"""A real Redis server for the tests: Debian's ``redis-server`` (``make sysdeps``) on
loopback and a free port, in a temporary directory, no persistence, stopped at the end.

``redis_server`` is session-scoped (it starts in milliseconds, but one is enough);
``redis_url`` gives each test its own empty database (FLUSHALL at its start).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL (redis://127.0.0.1:PORT/0) of a Redis server of the test session's own."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("no redis-server: run `make sysdeps` (Debian package redis-server)")
    base = Path(tempfile.mkdtemp(prefix="vmvault-redis-"))
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(base),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(base / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (base / "redis.log").read_text() if (base / "redis.log").exists() else ""
                pytest.fail(f"redis-server did not start: {log[-2000:]}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server
