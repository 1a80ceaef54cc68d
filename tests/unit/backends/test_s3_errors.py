"""How the S3 backend names what the store answered: answers SeaweedFS will not give on
demand (throttling, 5xx, a store without conditional writes), as botocore reports them."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
)
from urllib3.exceptions import ProtocolError

from vmvault.backends.base import TransientBackendError
from vmvault.backends.local import BackendDenied, BackendReadOnly
from vmvault.backends.retry import BackendUnavailable, RetryingBackend, is_transient
from vmvault.backends.s3 import (
    BucketMissing,
    ObjectExists,
    S3Backend,
    S3Error,
    _rejects_condition,
    parse_s3_url,
)
from vmvault.errors import ObjectMissing, UsageError


def _answer(status: int, code: str, message: str = "") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


BACKEND = S3Backend("bucket", "site/vault", client=None)


@pytest.mark.parametrize(
    ("status", "code", "op", "kind"),
    [
        (404, "NoSuchKey", "get", ObjectMissing),
        (404, "404", "head", ObjectMissing),
        (404, "NoSuchBucket", "put", BucketMissing),
        (412, "PreconditionFailed", "create", ObjectExists),
        (503, "SlowDown", "put", TransientBackendError),
        (500, "InternalError", "get", TransientBackendError),
        (429, "TooManyRequests", "get", TransientBackendError),
        (400, "RequestTimeout", "put", TransientBackendError),
        (403, "AccessDenied", "get", BackendDenied),
        (403, "SignatureDoesNotMatch", "put", BackendDenied),
        (403, "AccessDenied", "put", BackendReadOnly),
        (400, "InvalidArgument", "put", S3Error),
    ],
)
def test_answers_become_vmvault_errors(status: int, code: str, op: str, kind: type) -> None:
    error = BACKEND._error(op, "packs/ab/ab12", _answer(status, code))
    assert type(error) is kind
    assert "s3://bucket/site/vault" in str(error)


def test_dropped_connections_are_transient() -> None:
    for exc in (
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ):
        error = BACKEND._error("get", "config", exc)
        assert isinstance(error, TransientBackendError) and is_transient(error)


def test_cut_answers_are_transient() -> None:
    """A connection cut while an answer's body is read, or an answer shorter than it said."""
    cut = ProtocolError("Connection broken", ConnectionResetError(104, "reset by peer"))
    for exc in (
        cut,
        IncompleteReadError(actual_bytes=1, expected_bytes=2),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:1"),
    ):
        error = BACKEND._error("get", "config", exc)
        assert isinstance(error, TransientBackendError) and is_transient(error)
        assert error.reason.startswith("the connection was cut")


class _CutClient:
    """A boto3 client whose answers are cut: urllib3's own error, as botocore lets it
    through when the body of an error answer or a HeadObject is read."""

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            raise ProtocolError("Connection broken", ConnectionResetError(104, "reset"))

        return call


def test_raw_urllib3_errors_are_retried_and_named_once() -> None:
    backend = S3Backend("bucket", "v", client=_CutClient())
    for call in (
        lambda: backend.get("config"),
        lambda: backend.exists("config"),
        lambda: backend.put("config", b""),
        lambda: backend.create("points/p", b""),
        lambda: backend.delete("config"),
    ):
        with pytest.raises(TransientBackendError):
            call()
    retrying = RetryingBackend(backend, attempts=2, base_delay=0)
    with pytest.raises(BackendUnavailable) as raised:
        retrying.get("config")
    # The operation and the store once, then what went wrong: one readable line.
    assert raised.value.message.startswith(
        "the vault's storage (s3://bucket/v) kept failing: get config: the connection was cut"
    )
    assert raised.value.message.count("config") == 1


def test_a_store_without_conditional_writes_is_told_apart() -> None:
    assert _rejects_condition(_answer(501, "NotImplemented"))
    assert _rejects_condition(_answer(400, "InvalidArgument", "If-None-Match not supported"))
    assert not _rejects_condition(_answer(412, "PreconditionFailed"))
    assert not _rejects_condition(_answer(400, "InvalidArgument", "bad part"))


def test_urls() -> None:
    assert parse_s3_url("s3://b") == ("b", "")
    assert parse_s3_url("s3://b/") == ("b", "")
    assert parse_s3_url("s3://b/a/v/") == ("b", "a/v")
    for bad in ("s3://", "s3://b/../x", "s3://b/a//v"):
        with pytest.raises(UsageError):
            parse_s3_url(bad)
    assert S3Backend("b", "", None).describe() == "s3://b"
