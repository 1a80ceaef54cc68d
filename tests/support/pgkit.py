"""A PostgreSQL server of the test's own: a fresh cluster in a temporary directory, on
loopback and a free port, started with Debian's server binaries and stopped at the end."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


class Unavailable(Exception):
    """PostgreSQL is not installed (``make sysdeps`` installs it)."""


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise Unavailable(f"PostgreSQL's {name} not found (Debian package postgresql)")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields an SQLAlchemy URL of an empty database served by a new cluster."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    try:
        owner = pwd.getpwnam("postgres")  # the server refuses to run as root
    except KeyError:
        raise Unavailable("no postgres user") from None
    base = tempfile.mkdtemp(prefix="vmvault-pg-")
    os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port = os.path.join(base, "data"), _free_port()

    def as_postgres(*argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            capture_output=True,
            timeout=120,
        )

    try:
        as_postgres(initdb, "-D", data, "-A", "trust", "-U", "vmvault", "--no-sync")
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -F"
        as_postgres(pg_ctl, "-D", data, "-o", options, "-l", f"{base}/log", "-w", "start")
        try:
            yield f"postgresql+psycopg://vmvault@127.0.0.1:{port}/postgres"
        finally:
            as_postgres(pg_ctl, "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
