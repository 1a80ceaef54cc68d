"""How the Azure backend names what the service answered: answers Azurite will not give on
demand (throttling, 5xx, a read-only role, dropped connections), built as the SDK builds
them: an HTTP answer passed through the SDK's own classifier, no network."""

from __future__ import annotations

import pytest
import requests
from azure.core.exceptions import (
    HttpResponseError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import HttpRequest, RequestsTransportResponse
from azure.storage.blob._shared.authentication import AzureSigningError
from azure.storage.blob._shared.response_handlers import process_storage_error

from vmvault.backends.azure import (
    AzureBackend,
    AzureStoreError,
    connection_string_account,
    parse_azure_url,
)
from vmvault.backends.base import (
    BucketMissing,
    ObjectExists,
    ObjectRetained,
    TransientBackendError,
)
from vmvault.backends.local import BackendDenied, BackendReadOnly
from vmvault.backends.retry import is_transient
from vmvault.backends.url import vault_scheme
from vmvault.errors import ObjectMissing, UsageError

BACKEND = AzureBackend("acct1", "backups", "site/vault", client=None)
SAS_URL = "https://acct1.blob.core.windows.net/backups/site/vault/config?sv=2024&sig=SECRETSIG"


def _answer(status: int, code: str, body: bytes = b"") -> HttpResponseError:
    """The exception the SDK raises for an HTTP answer with this status and error code."""
    raw = requests.Response()
    raw.status_code = status
    raw.reason = "reason"
    raw.headers["x-ms-error-code"] = code
    raw._content = body
    response = RequestsTransportResponse(HttpRequest("PUT", SAS_URL), raw)
    try:
        process_storage_error(HttpResponseError(response=response))
    except HttpResponseError as exc:
        return exc
    raise AssertionError("process_storage_error always raises")


@pytest.mark.parametrize(
    ("status", "code", "op", "kind"),
    [
        (404, "BlobNotFound", "get", ObjectMissing),
        (404, "BlobNotFound", "head", ObjectMissing),
        (404, "ContainerNotFound", "put", BucketMissing),
        (404, "ContainerNotFound", "head", BucketMissing),
        (409, "BlobAlreadyExists", "create", ObjectExists),
        (412, "ConditionNotMet", "create", ObjectExists),
        (503, "ServerBusy", "put", TransientBackendError),
        (500, "OperationTimedOut", "get", TransientBackendError),
        (500, "InternalError", "get", TransientBackendError),
        (429, "TooManyRequests", "get", TransientBackendError),
        (408, "RequestTimeout", "put", TransientBackendError),
        (403, "AuthenticationFailed", "get", BackendDenied),
        (403, "AuthenticationFailed", "put", BackendDenied),  # a wrong key: no access at all
        (403, "AuthorizationFailure", "put", BackendDenied),  # a firewall rule, or Azurite
        (403, "AuthorizationPermissionMismatch", "get", BackendDenied),
        (403, "AuthorizationPermissionMismatch", "put", BackendReadOnly),
        (403, "AuthorizationPermissionMismatch", "create", BackendReadOnly),
        (403, "AuthorizationPermissionMismatch", "delete", BackendReadOnly),
        (401, "NoAuthenticationInformation", "get", BackendDenied),
        (409, "BlobAlreadyExists", "put", AzureStoreError),  # only a creation is refused so
        (409, "LeaseIdMissing", "create", AzureStoreError),  # a conflict, not "taken"
        (409, "BlobImmutableDueToPolicy", "delete", ObjectRetained),  # left for later
        (409, "BlobImmutableDueToPolicy", "put", AzureStoreError),  # a write is no cleanup
        (400, "InvalidHeaderValue", "put", AzureStoreError),
    ],
)
def test_answers_become_vmvault_errors(status: int, code: str, op: str, kind: type) -> None:
    exc = _answer(status, code)
    assert exc.status_code == status  # the SDK's own exception, as a call would raise it
    error = BACKEND._error(op, "packs/ab/ab12", exc)
    assert type(error) is kind
    assert "azure://acct1/backups/site/vault" in str(error)
    assert "SECRETSIG" not in str(error)
    assert is_transient(error) == (kind is TransientBackendError)


def test_an_error_code_from_the_xml_body_too() -> None:
    body = (
        b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
        b"<Message>Egress is over the account limit.</Message></Error>"
    )
    exc = _answer(503, "", body)
    assert isinstance(BACKEND._error("get", "config", exc), TransientBackendError)


def test_dropped_connections_and_cut_bodies_are_transient() -> None:
    for exc in (
        ServiceRequestError(f"connection refused: {SAS_URL}"),
        ServiceRequestTimeoutError("connect timed out"),
        ServiceResponseError("connection reset by peer"),
        ServiceResponseTimeoutError("read timed out"),
        IncompleteReadError("body cut short"),
        # the downloader's own re-reads used up: a bare HttpResponseError around the last one
        HttpResponseError(
            ServiceResponseError("reset"), error=ServiceResponseError("connection reset")
        ),
        HttpResponseError(IncompleteReadError("cut"), error=IncompleteReadError("cut")),
        HttpResponseError("busy", error=_answer(503, "ServerBusy")),
    ):
        error = BACKEND._error("get", "config", exc)
        assert isinstance(error, TransientBackendError) and is_transient(error), exc
        assert "SECRETSIG" not in str(error)


def test_other_failures_are_one_error_without_the_sdk_text() -> None:
    unsigned = AzureSigningError(message="Incorrect padding: the key SECRETKEY")
    error = BACKEND._error("get", "config", unsigned)
    assert isinstance(error, BackendDenied) and "cannot be signed" in str(error)
    assert "SECRETKEY" not in str(error)
    odd = HttpResponseError(f"something odd with {SAS_URL}")  # no answer, no known cause
    error = BACKEND._error("list", "/", odd)
    assert isinstance(error, AzureStoreError) and "SECRETSIG" not in str(error)
    assert not is_transient(error)
    wrapped = HttpResponseError("gone", error=_answer(404, "BlobNotFound"))  # the downloader's
    assert isinstance(BACKEND._error("get", "config", wrapped), ObjectMissing)


def test_urls() -> None:
    assert parse_azure_url("azure://acct1/backups") == ("acct1", "backups", "")
    assert parse_azure_url("azure://acct1/backups/") == ("acct1", "backups", "")
    assert parse_azure_url("azure://acct1/backups/a/v/") == ("acct1", "backups", "a/v")
    for bad in (
        "azure://",
        "azure://acct1",
        "azure://acct1/",
        "azure://Acct1/backups",  # account names are lowercase
        "azure://ac/backups",  # 3 to 24 characters
        "azure://acct1/Backups",
        "azure://acct1/ba",
        "azure://acct1/-backups",
        "azure://acct1/back--ups",
        "azure://acct1/backups/../x",
        "azure://acct1/backups/a//v",
    ):
        with pytest.raises(UsageError):
            parse_azure_url(bad)
    assert AzureBackend("acct1", "backups", "", None).describe() == "azure://acct1/backups"
    assert BACKEND.describe() == "azure://acct1/backups/site/vault"
    assert vault_scheme("azure://acct1/backups") == "azure"
    assert vault_scheme("AZURE://acct1/backups") == "azure"
    assert vault_scheme("/srv/vault") is None
    with pytest.raises(UsageError, match=r"azure://ACCOUNT/CONTAINER"):
        vault_scheme("gs://bucket")


def test_the_account_a_connection_string_names() -> None:
    key = "AccountKey=SECRET=="
    assert connection_string_account(f"AccountName=acct1;{key};EndpointSuffix=x") == "acct1"
    assert connection_string_account(f"DefaultEndpointsProtocol=https;accountname=a2;{key}") == "a2"
    assert connection_string_account("UseDevelopmentStorage=true") == "devstoreaccount1"
    sas_only = "BlobEndpoint=https://acct1.blob.core.windows.net/;SharedAccessSignature=sv=1&sig=x"
    assert connection_string_account(sas_only) is None  # nothing to compare: the SDK decides
