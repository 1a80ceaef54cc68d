"""Where a vault lives, from the one string a user gives: a directory or an ``s3://`` URL.

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

import re
from typing import TYPE_CHECKING

from vmvault.backends.base import Backend
from vmvault.backends.cache import with_cache
from vmvault.backends.local import LocalBackend
from vmvault.backends.metering import CountingBackend, RequestCounter
from vmvault.backends.retry import RetryingBackend
from vmvault.errors import UsageError

if TYPE_CHECKING:  # botocore is imported only when an S3 vault is opened
    from vmvault.backends.s3 import S3Backend

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
S3_MAX_CONNECTIONS = 32  # the backup's reader and writer threads share one client's pool


def vault_scheme(location: str) -> str | None:
    """``"s3"`` for an S3 URL, None for a directory; other schemes are refused."""
    match = _SCHEME.match(location)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme != "s3":
        raise UsageError(f"unsupported vault URL {location!r}: give a directory or s3://BUCKET")
    return scheme


def is_directory_vault(location: str) -> bool:
    return vault_scheme(location) is None


def open_backend(
    location: str, *, counter: RequestCounter | None = None, cache: bool | None = None
) -> Backend:
    """The vault's backend behind the retry layer: S3 for ``s3://BUCKET[/PREFIX]``, else a
    local directory. An object store's requests go into ``counter`` (a new one if None:
    ``metering.request_counter`` finds it), and it gets the local cache unless ``cache`` is
    False (None: unless ``$VMVAULT_NO_CACHE`` says so)."""
    scheme = vault_scheme(location)
    if scheme is None:
        return RetryingBackend(LocalBackend(location))
    store: Backend = open_s3(location)
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
