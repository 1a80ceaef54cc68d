"""The server's access log: no line for the successful reads a dashboard polls every
second; every write, every error, and (at DEBUG) everything, with secrets redacted."""

from __future__ import annotations

import logging

from vmvault.server.app import ACCESS_LOG_REDACTION


def _kept(method: str, path: str, status: int) -> logging.LogRecord | None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", method, path, "1.1", status),
        None,
    )
    return record if ACCESS_LOG_REDACTION.filter(record) else None


def test_polls_are_quiet_writes_and_errors_are_logged() -> None:
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    assert _kept("GET", "/api/v1/jobs?limit=50", 200) is None
    assert _kept("GET", "/static/app.js", 304) is None
    assert _kept("POST", "/api/v1/vms/web01/backup", 202) is not None
    assert _kept("GET", "/api/v1/jobs/7", 404) is not None
    assert _kept("GET", "/", 303) is not None  # a redirect to the login page
    denied = _kept("GET", "/api/v1/vault?token=s3cret", 401)
    assert denied is not None and "s3cret" not in denied.getMessage()


def test_at_debug_every_request_is_logged() -> None:
    access = logging.getLogger("uvicorn.access")
    before = access.level
    access.setLevel(logging.DEBUG)
    try:
        assert _kept("GET", "/api/v1/jobs", 200) is not None
    finally:
        access.setLevel(before)
