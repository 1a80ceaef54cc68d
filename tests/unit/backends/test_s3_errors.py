"""How the S3 backend names what the store answered: answers SeaweedFS will not give on
demand (throttling, 5xx, a store without conditional writes), as botocore reports them."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from vmvault.backends.base import TransientBackendError
from vmvault.backends.local import BackendDenied, BackendReadOnly
from vmvault.backends.retry import is_transient
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
