"""S3 backend: one S3 object per vault object, under a prefix of one bucket.

Why boto3: it is the maintained AWS SDK, and it speaks to any S3-compatible server
(SeaweedFS, MinIO, Ceph RGW, the clouds' own) through an endpoint URL, with credentials,
endpoint and region from its usual sources (``AWS_*`` variables, ``~/.aws`` files). Nothing
secret passes through vmvault: ``describe`` names only ``s3://bucket/prefix``.

What S3 gives and vmvault relies on:

- A PutObject is atomic: a reader sees the old object, or none, or the new one whole, never
  a prefix. So ``put`` is one PutObject of the whole payload (vault objects are at most a
  pack, tens of MiB, below S3's 5 GiB single-put limit); no multipart upload that could
  leave parts behind.
- Conditional writes: ``create`` sends ``If-None-Match: *``, so a second writer of the same
  key is refused (412) by the store itself. SeaweedFS honours it (tested). A store that
  rejects the header (501, or 400 naming it) falls back, for the life of this backend, to
  HeadObject then PutObject, which has a race window: said in docs/ARCHITECTURE.md.

- Object Lock (``Retaining``, see ``backends/base.py``): in a bucket created with Object
  Lock enabled, the objects the vault's rule covers are written with a mode and a
  retain-until date (``x-amz-object-lock-*`` on the same PutObject), and extended later
  with PutObjectRetention. Object Lock implies versioning: a DeleteObject without a version
  id only adds a delete marker, so vmvault's own deletes (prune, gc) still work, and the
  retained version stays readable by its version id until its date has passed.

Errors: a missing key is ``ObjectMissing``; 403 is ``BackendDenied`` (reads) or
``BackendReadOnly`` (writes refused with AccessDenied); 408, 429, 5xx and dropped or timed-out
connections are ``TransientBackendError``, which ``RetryingBackend`` repeats. boto3's own
retries are turned off by ``open_backend`` so one policy (with its deadline) decides.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from urllib3.exceptions import HTTPError as URLLib3Error

from vmvault.backends.base import (
    BucketMissing,
    ObjectExists,
    ObjectRetained,
    Payload,
    RetentionMode,
    RetentionSupport,
    StoreRetention,
    TransientBackendError,
    WriteRetention,
    validate_key,
)
from vmvault.backends.local import BackendDenied, BackendReadOnly
from vmvault.errors import CorruptObject, ObjectMissing, UsageError, VmvaultError

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED_CODES = frozenset({"403", "AccessDenied", "Forbidden"})
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "InternalError",
        "ServiceUnavailable",
        "RequestLimitExceeded",
    }
)
_WRITES = frozenset({"put", "create", "delete", "retain"})
_NO_LOCK_CONFIG = frozenset(
    {"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"}
)
_MODES: dict[str, RetentionMode] = {"GOVERNANCE": "governance", "COMPLIANCE": "compliance"}
S3_PARALLEL_WRITES = 4
# What a call to boto3 may raise. urllib3's own errors are among them: botocore reads the
# body of an error answer (and of HeadObject, a listing) outside the code that turns a cut
# connection into one of its own errors, so a connection reset there arrives as urllib3's
# ProtocolError (found by tests/integration/test_s3_faults.py).
_CLIENT_ERRORS = (ClientError, BotoCoreError, URLLib3Error)

__all__ = ["BucketMissing", "ObjectExists", "S3Backend", "S3Error", "parse_s3_url"]


class S3Error(VmvaultError):
    """The store refused a request in a way no retry mends (a bad request, a bad bucket)."""

    code = "backend_error"


def _status(exc: ClientError) -> int:
    status: int = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status


def _code(exc: ClientError) -> str:
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code


def _body(data: Payload) -> bytes | bytearray | memoryview:
    if isinstance(data, bytes | bytearray | memoryview):
        return data
    return b"".join(data)  # one PutObject needs one body: the parts joined once


class S3Backend:
    """Vault objects in ``bucket`` under ``prefix``; ``client`` is a boto3 S3 client.

    One client for all calls: boto3 clients are thread-safe and keep a pool of connections,
    so the many threads of a backup reuse them."""

    list_page_size = 1000  # keys per ListObjectsV2 answer: what backends.metering counts
    # A PutObject spends most of its time waiting on the network and the store: a backup
    # uploads this many packs at once (``Vault.pack_writer``; memory: docs/ARCHITECTURE.md).
    parallel_writes = S3_PARALLEL_WRITES

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)  # the same rules as keys: no ``..``, nothing odd
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = client
        self._conditional = True  # If-None-Match works until the store says otherwise
        self._lock = threading.Lock()
        self._write_retention: WriteRetention | None = None

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _error(self, op: str, key: str, exc: Exception) -> Exception:
        """One vmvault error for what boto3 raised (see the module doc)."""
        where = self.describe()
        if isinstance(exc, ClientError):
            status, code = _status(exc), _code(exc)
            if code == "NoSuchBucket":
                return BucketMissing(f"bucket {self.bucket!r} does not exist ({where})")
            if code in _MISSING_CODES or status == 404:
                return ObjectMissing(f"object {key} is missing from {where}")
            if code == "PreconditionFailed" or status == 412:
                return ObjectExists(f"object {key} already exists in {where}")
            if status in (408, 429) or status >= 500 or code in _TRANSIENT_CODES:
                answer = f"{status} {code}"
                return TransientBackendError(f"{op} {key} in {where}: {answer}", reason=answer)
            if status == 403 or code in _DENIED_CODES:
                if op in _WRITES and code == "AccessDenied":
                    return BackendReadOnly(f"the vault at {where} may not be written: {op} {key}")
                return BackendDenied(f"the vault at {where} may not be read ({code}): {op} {key}")
            return S3Error(f"the store refused {op} {key} in {where}: {status} {code}")
        if isinstance(
            exc,
            HTTPClientError
            | BotoConnectionError
            | ReadTimeoutError
            | IncompleteReadError
            | URLLib3Error,
        ):
            # refused, reset, closed or timed-out connections; an answer cut short
            why = _connection_trouble(exc)
            return TransientBackendError(f"{op} {key} in {where}: {why}", reason=why)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return BackendDenied(
                f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                " (or an AWS profile)"
            )
        return S3Error(f"the store failed {op} {key} in {where}: {type(exc).__name__}")

    def _lock_args(self, key: str) -> dict[str, Any]:
        """The Object Lock headers of a write of ``key``, if the vault's rule covers it."""
        rule = self._write_retention
        if rule is None or not rule.covers(key):
            return {}
        return {"ObjectLockMode": rule.mode.upper(), "ObjectLockRetainUntilDate": rule.until()}

    def put(self, key: str, data: Payload) -> None:
        full = self._key(key)
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=full, Body=_body(data), **self._lock_args(key)
            )
        except _CLIENT_ERRORS as exc:
            raise self._error("put", key, exc) from None

    def create(self, key: str, data: Payload) -> None:
        """Put an object only if the key is free; ``ObjectExists`` if it is taken."""
        full = self._key(key)
        if self._conditional:
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=full,
                    Body=_body(data),
                    IfNoneMatch="*",
                    **self._lock_args(key),
                )
                return
            except _CLIENT_ERRORS as exc:
                if not (isinstance(exc, ClientError) and _rejects_condition(exc)):
                    raise self._error("create", key, exc) from None
                with self._lock:
                    self._conditional = False
        # A store without conditional writes: a race with another writer is possible here,
        # but vmvault's creation-only keys are unique names (hashes, random ids).
        if self.exists(key):
            raise ObjectExists(f"object {key} already exists in {self.describe()}")
        self.put(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            return b""  # no valid Range for zero bytes
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if length is not None:
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            args["Range"] = f"bytes={offset}-"
        try:
            response = self.client.get_object(**args)
            data: bytes = response["Body"].read()
        except ClientError as exc:
            if _status(exc) == 416 or _code(exc) == "InvalidRange":
                if length is None:
                    return b""  # reading from the end, as a file read does
                raise CorruptObject(f"object {key} is shorter than expected (truncated)") from None
            raise self._error("get", key, exc) from None
        except (BotoCoreError, URLLib3Error) as exc:
            raise self._error("get", key, exc) from None
        if length is not None and len(data) != length:
            raise CorruptObject(f"object {key} is shorter than expected (truncated)")
        return data

    def _head(self, key: str) -> dict[str, Any]:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return head
        except _CLIENT_ERRORS as exc:
            raise self._error("head", key, exc) from None

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectMissing:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def modified(self, key: str) -> float:
        return float(self._head(key)["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[str]:
        start = len(self.prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", ()):
                    key: str = item["Key"]
                    if not key.endswith("/"):  # folder markers some tools leave
                        yield key[start:]
        except _CLIENT_ERRORS as exc:
            raise self._error("list", prefix or "/", exc) from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                return  # already gone: no error, as the protocol asks
            error = self._error("delete", key, exc)
            if isinstance(error, BackendReadOnly):
                # In a versioned bucket a delete only adds a marker, whatever the lock; a
                # store that refuses it instead answers AccessDenied, as for a credential
                # without delete rights: the object's own retention tells them apart.
                held = self._retention_or_none(key)
                if held is not None and held.active():
                    raise ObjectRetained(
                        f"the store retains {key} in {self.describe()}{held.describe()}:"
                        " it cannot be deleted before then"
                    ) from None
            raise error from None
        except (BotoCoreError, URLLib3Error) as exc:
            raise self._error("delete", key, exc) from None

    # -- Object Lock (the Retaining capability) ---------------------------------------

    def retention_support(self) -> RetentionSupport:
        feature = "S3 Object Lock"
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            status, code = _status(exc), _code(exc)
            if code in _NO_LOCK_CONFIG or (status == 404 and code != "NoSuchBucket"):
                return RetentionSupport(
                    feature,
                    False,
                    f"bucket {self.bucket!r} has no Object Lock (it is enabled when a bucket"
                    " is created, or on a versioned bucket where the store allows it)",
                )
            if status == 501 or code == "NotImplemented":
                return RetentionSupport(feature, False, "the store does not implement Object Lock")
            if status == 403 or code in _DENIED_CODES:
                return RetentionSupport(
                    feature,
                    False,
                    f"these credentials may not read the Object Lock configuration of bucket"
                    f" {self.bucket!r} (s3:GetBucketObjectLockConfiguration)",
                )
            raise self._error("head", "/", exc) from None
        except (BotoCoreError, URLLib3Error) as exc:
            raise self._error("head", "/", exc) from None
        config = answer.get("ObjectLockConfiguration", {})
        if config.get("ObjectLockEnabled") != "Enabled":
            return RetentionSupport(
                feature, False, f"Object Lock is not enabled on bucket {self.bucket!r}"
            )
        note = ""
        default = config.get("Rule", {}).get("DefaultRetention")
        if default:
            # Said, not changed: a bucket default applies to every object version, the
            # ones vmvault rewrites in place (settings, locks) included.
            span = f"{default.get('Days') or default.get('Years', 0) * 365} days"
            note = (
                f"bucket {self.bucket!r} also has a default retention ({default.get('Mode')},"
                f" {span}): every version of every object is kept that long, each lock and"
                " settings rewrite included"
            )
        detail = f"Object Lock is enabled on bucket {self.bucket!r}"
        return RetentionSupport(feature, True, detail, note)

    def retain_writes(self, rule: WriteRetention | None) -> None:
        self._write_retention = rule

    def _retention_or_none(self, key: str) -> StoreRetention | None:
        try:
            return self.retention(key)
        except VmvaultError:
            return None

    def retention(self, key: str) -> StoreRetention | None:
        head = self._head(key)
        mode = _MODES.get(str(head.get("ObjectLockMode", "")).upper())
        until: datetime | None = head.get("ObjectLockRetainUntilDate")
        hold = str(head.get("ObjectLockLegalHoldStatus", "")).upper() == "ON"
        if mode is None and until is None and not hold:
            return None
        return StoreRetention(mode, until.astimezone(UTC) if until else None, hold)

    def retain(self, key: str, retention: StoreRetention) -> None:
        if retention.mode is None or retention.until is None:
            raise ValueError("a retention to set needs a mode and a date")
        try:
            self.client.put_object_retention(
                Bucket=self.bucket,
                Key=self._key(key),
                Retention={"Mode": retention.mode.upper(), "RetainUntilDate": retention.until},
            )
        except _CLIENT_ERRORS as exc:
            raise self._error("retain", key, exc) from None

    def check_bucket(self) -> None:
        """Fail with one clear line if the bucket is missing or closed to these credentials."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) == "NoSuchBucket":
                raise BucketMissing(
                    f"bucket {self.bucket!r} does not exist: create it first ({self.describe()})"
                ) from None
            raise self._error("head", "/", exc) from None
        except (BotoCoreError, URLLib3Error) as exc:
            raise self._error("head", "/", exc) from None

    def list_leftovers(self) -> builtins.list[str]:
        """None: a PutObject that fails leaves nothing (no temporary objects on S3)."""
        return []


def _connection_trouble(exc: Exception) -> str:
    """A dropped or timed-out connection in a few words, for the error line."""
    if isinstance(exc, EndpointConnectionError):
        return "cannot connect to the store"
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return "the store did not answer in time"
    return f"the connection was cut ({type(exc).__name__})"


def _rejects_condition(exc: ClientError) -> bool:
    """Whether the store refused the If-None-Match header itself (not the key being taken)."""
    status, code = _status(exc), _code(exc)
    if status == 501 or code == "NotImplemented":
        return True
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return status == 400 and "if-none-match" in message.lower()


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` as (bucket, prefix)."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"no bucket in vault URL {url!r}: use s3://BUCKET[/PREFIX]")
    prefix = prefix.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except UsageError:
            raise UsageError(f"invalid prefix in vault URL {url!r}") from None
    return bucket, prefix
