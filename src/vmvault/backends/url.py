"""Where a vault lives, from the one string a user gives: a directory, an ``s3://`` URL or an
``azure://`` URL.

``open_backend`` is the only place that tells them apart; everything else holds a Backend.
What it builds for an object store (any scheme), from the vault down:

    CachingBackend (backends/cache.py: copies of immutable objects; unless disabled)
      -> RetryingBackend (backends/retry.py)
        -> CountingBackend (backends/metering.py: every attempt is a request)
          -> the store's backend (S3Backend)

A directory is only ``RetryingBackend(LocalBackend)``: reading its files is as cheap as
reading a cached copy, and nobody bills its requests.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING

from vmvault.backends.base import Backend
from vmvault.backends.cache import with_cache
from vmvault.backends.local import LocalBackend
from vmvault.backends.metering import CountingBackend, RequestCounter
from vmvault.backends.retry import RetryingBackend
from vmvault.errors import UsageError

if TYPE_CHECKING:  # the SDKs are imported only when a vault of theirs is opened
    from vmvault.backends.azure import AzureBackend
    from vmvault.backends.s3 import S3Backend

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SCHEMES = ("s3", "azure")
S3_MAX_CONNECTIONS = 32  # the backup's reader and writer threads share one client's pool
AZURE_MAX_CONNECTIONS = 32  # the same threads, one container client's pool
# Above any pack (16 MiB by default, 64 MiB at most in practice): every vault object is one
# Put Blob. Azure takes up to 5000 MiB in one; the SDK's default (64 MiB) would stage blocks.
AZURE_SINGLE_PUT = 256 * 1024 * 1024
AZURE_SINGLE_GET = 256 * 1024 * 1024  # one GET per object read, not 32 MiB then 4 MiB chunks
# How much of a response body the SDK's transport reads per step (its default, 4 KiB, is a
# Python-level iteration per 4 KiB: reading 15 MiB ranges from Azurite took 3.2x the CPU
# and 3.5x the time of 64 KiB or more; the bench's restore from Azure spent most of its
# extra CPU there).
AZURE_READ_BLOCK = 256 * 1024


def vault_scheme(location: str) -> str | None:
    """``"s3"`` or ``"azure"`` for an object-store URL, None for a directory; other schemes
    are refused."""
    match = _SCHEME.match(location)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise UsageError(
            f"unsupported vault URL {location!r}: give a directory, s3://BUCKET or"
            " azure://ACCOUNT/CONTAINER"
        )
    return scheme


def is_directory_vault(location: str) -> bool:
    return vault_scheme(location) is None


def open_backend(
    location: str, *, counter: RequestCounter | None = None, cache: bool | None = None
) -> Backend:
    """The vault's backend behind the retry layer: S3 for ``s3://BUCKET[/PREFIX]``, Azure
    Blob Storage for ``azure://ACCOUNT/CONTAINER[/PREFIX]``, else a local directory. An
    object store's requests go into ``counter`` (a new one if None:
    ``metering.request_counter`` finds it), and it gets the local cache unless ``cache`` is
    False (None: unless ``$VMVAULT_NO_CACHE`` says so)."""
    scheme = vault_scheme(location)
    if scheme is None:
        return RetryingBackend(LocalBackend(location))
    store: Backend = open_s3(location) if scheme == "s3" else open_azure(location)
    return with_cache(RetryingBackend(CountingBackend(store, counter)), cache)


def open_s3(url: str) -> S3Backend:
    """An S3Backend with boto3's usual configuration sources for credentials, endpoint
    (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``) and region; never from vmvault's own
    options, so nothing secret reaches a command line or a log."""
    # Imported here: boto3 takes a while to import, and directory vaults never need it.
    import boto3
    from botocore.config import Config

    from vmvault.backends.s3 import S3Backend, parse_s3_url

    bucket, prefix = parse_s3_url(url)
    config = Config(
        # One retry policy, RetryingBackend's (with its deadline), not boto3's under it.
        retries={"total_max_attempts": 1},
        max_pool_connections=S3_MAX_CONNECTIONS,
        connect_timeout=10,
        read_timeout=60,
    )
    client = boto3.session.Session().client("s3", config=config)
    return S3Backend(bucket, prefix, client)


def open_azure(url: str) -> AzureBackend:
    """An AzureBackend with credentials and endpoint from Azure's usual environment only,
    never from vmvault's options, so nothing secret reaches a command line or a log:

    - ``AZURE_STORAGE_CONNECTION_STRING`` when set (it names the endpoint: how Azurite or
      another cloud is reached); its AccountName must be the URL's account;
    - else ``https://ACCOUNT.blob.core.windows.net`` (or ``AZURE_STORAGE_BLOB_ENDPOINT``)
      with ``AZURE_STORAGE_KEY`` (shared key) or else ``AZURE_STORAGE_SAS_TOKEN``.
    """
    # Imported here: the SDK takes a while to import, and other vaults never need it.
    import requests
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import BlobServiceClient
    from urllib3.util.retry import Retry

    from vmvault.backends.azure import AzureBackend, connection_string_account, parse_azure_url

    account, container, prefix = parse_azure_url(url)
    where = f"azure://{account}/{container}"
    # The SDK logs every request at INFO (headers redacted): the server's and daemon's INFO
    # logs would be one line per object. Its warnings and errors still show.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    # One session opened here, shared by every thread: the SDK opens its own lazily on
    # first use, which threads starting together could race. Its pool holds a connection
    # for each thread of a backup; urllib3 retries nothing (the SDK's transport does the same).
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_maxsize=AZURE_MAX_CONNECTIONS,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    options = {
        # One retry policy, RetryingBackend's (with its deadline), not the SDK's under it.
        "retry_total": 0,
        "retry_to_secondary": False,
        "max_single_put_size": AZURE_SINGLE_PUT,
        "max_single_get_size": AZURE_SINGLE_GET,
        "connection_timeout": 10,
        "read_timeout": 60,
        "transport": RequestsTransport(
            session=session, session_owner=False, connection_data_block_size=AZURE_READ_BLOCK
        ),
    }
    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").strip()
    if connection_string:
        named = connection_string_account(connection_string)
        if named is not None and named != account:
            raise UsageError(
                f"AZURE_STORAGE_CONNECTION_STRING is for account {named!r}, not {account!r}"
                f" of {where}: set the connection string of {account!r}"
            )
        try:
            service = BlobServiceClient.from_connection_string(connection_string, **options)
        except ValueError:  # its text could quote the string: say only that it is wrong
            raise UsageError(
                "AZURE_STORAGE_CONNECTION_STRING is malformed (expected"
                " AccountName=...;AccountKey=...;BlobEndpoint=... or similar)"
            ) from None
    else:
        endpoint = os.environ.get("AZURE_STORAGE_BLOB_ENDPOINT", "").strip()
        endpoint = endpoint or f"https://{account}.blob.core.windows.net"
        key = os.environ.get("AZURE_STORAGE_KEY", "").strip()
        sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN", "").strip().lstrip("?")
        credential: AzureNamedKeyCredential | AzureSasCredential
        if key:
            credential = AzureNamedKeyCredential(account, key)
        elif sas:
            credential = AzureSasCredential(sas)
        else:
            raise UsageError(
                f"no Azure credentials for {where}: set AZURE_STORAGE_CONNECTION_STRING, or"
                " AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN (with AZURE_STORAGE_BLOB_ENDPOINT"
                " for an endpoint other than ACCOUNT.blob.core.windows.net)"
            )
        try:
            service = BlobServiceClient(endpoint, credential=credential, **options)
        except ValueError:  # not quoted: a SAS pasted into it would be printed
            raise UsageError("AZURE_STORAGE_BLOB_ENDPOINT is not an http(s) URL") from None
    return AzureBackend(account, container, prefix, service.get_container_client(container))
