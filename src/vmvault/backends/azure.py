"""Azure Blob Storage backend: one block blob per vault object, under a prefix of one
container.

Why azure-storage-blob: it is Microsoft's maintained SDK for the Blob service, it signs
requests with a shared key or a SAS token from Azure's usual environment variables, and it
reaches Azurite (the official emulator, which the tests run) through the endpoint of a
connection string. Nothing secret passes through vmvault: ``describe`` names only
``azure://account/container/prefix``, and no message quotes the SDK's own text (it can
hold a request URL, SAS signature included).

What Azure gives and vmvault relies on:

- A Put Blob is atomic: a reader sees the old blob, or none, or the new one whole. So
  ``put`` is one upload of the whole payload, sent as one Put Blob (``open_azure`` sets
  ``max_single_put_size`` above any pack); a larger one would be staged blocks and one
  Put Block List at the end, which is atomic too (staged blocks are never visible).
- Conditional writes: ``create`` uploads with ``If-None-Match: *`` (``overwrite=False``),
  so a second writer of the same key is refused by the service (409 BlobAlreadyExists,
  or 412 ConditionNotMet). Azure and Azurite both honour it; there is no fallback.

- Version-level immutability (``Retaining``, see ``backends/base.py``): in a container
  with version-level immutability enabled (which needs blob versioning on the account), the
  blobs the vault's rule covers are uploaded with an immutability policy (mode Locked or
  Unlocked, an expiry time) on the same Put Blob, and extended later with Set Blob
  Immutability Policy. Deleting such a blob makes it a previous version, kept until the
  policy expires, so vmvault's own deletes still work. This follows Azure's documented API
  but has not run against Azure itself: Azurite implements none of it (it answers 501 to
  the policy calls and ignores the upload headers), so no container there reports the
  feature and vmvault never uses it there.

Errors: a missing blob is ``ObjectMissing``; a missing container ``BucketMissing``; 401 and
403 are ``BackendDenied`` (reads, bad credentials) or ``BackendReadOnly`` (writes the
credential may not make); 408, 429, 5xx and refused, reset or timed-out connections are
``TransientBackendError``, which ``RetryingBackend`` repeats. The SDK's own retries are
turned off by ``open_azure`` so one policy (with its deadline) decides; one is left that no
option reaches: its downloader reads a body cut short again, up to 3 times, 1 s apart.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator
from datetime import UTC
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceResponseError,
)

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

if TYPE_CHECKING:
    from azure.storage.blob import BlobProperties, ContainerClient

_TRANSIENT_CODES = frozenset({"OperationTimedOut", "ServerBusy", "InternalError"})
# The 403 that says "this credential may not do that" (a SAS token or role without write
# or delete): on a write, the vault is read-only. Not AuthenticationFailed (a wrong key) nor
# AuthorizationFailure (a firewall rule, or Azurite's answer to a wrong key): no access.
_NOT_PERMITTED_CODES = frozenset({"AuthorizationPermissionMismatch"})
_TAKEN_CODES = frozenset({"BlobAlreadyExists", "ConditionNotMet"})
_WRITES = frozenset({"put", "create", "delete", "retain"})
# Azure's policy modes: Locked cannot be shortened or removed by anyone, Unlocked can (by
# whoever may set policies), like S3's COMPLIANCE and GOVERNANCE.
_POLICY_MODES: dict[RetentionMode, str] = {"compliance": "Locked", "governance": "Unlocked"}
_MODES_BY_POLICY: dict[str, RetentionMode] = {v.lower(): k for k, v in _POLICY_MODES.items()}
# Account names: 3-24 lowercase letters and digits. Container names: 3-63 lowercase
# letters, digits and single hyphens, starting and ending with a letter or digit.
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class AzureStoreError(VmvaultError):
    """The service refused a request in a way no retry mends (a bad request, a conflict)."""

    code = "backend_error"


def _code(exc: HttpResponseError) -> str:
    """The service's error code (``BlobNotFound``...): the SDK sets ``error_code`` from the
    ``x-ms-error-code`` header or the XML body, as a string or a StorageErrorCode."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _is_transient(exc: BaseException) -> bool:
    """Connections refused, reset or timed out, and bodies cut short: the request may
    succeed when sent again."""
    return isinstance(exc, ServiceRequestError | ServiceResponseError | IncompleteReadError)


def _unwrap(exc: Exception) -> Exception:
    """What the downloader raised for: it re-reads a body cut short a few times itself,
    then raises a bare HttpResponseError (no answer of its own) around the last failure."""
    inner = getattr(exc, "inner_exception", None)
    if (
        isinstance(exc, HttpResponseError)
        and exc.status_code is None
        and isinstance(inner, AzureError)
        and inner is not exc
    ):
        return _unwrap(inner)
    return exc


def _body(data: Payload) -> bytes:
    # The SDK sends bytes as one body; a bytearray or memoryview it would iterate as ints.
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    return b"".join(data)  # one Put Blob needs one body: the parts joined once


class AzureBackend:
    """Vault objects in ``container`` of ``account`` under ``prefix``; ``client`` is the
    SDK's ContainerClient for that container.

    One client for all calls: its pipeline and connection pool are shared by the blob
    clients made from it, and the SDK's clients may be used from many threads, so the
    threads of a backup reuse the pool's connections."""

    page_size: int | None = None  # names per listing page: the service's (5000) unless set
    # A Put Blob spends most of its time waiting on the network and the service: a backup
    # uploads this many packs at once (``Vault.pack_writer``), as to S3.
    parallel_writes = 4

    def __init__(
        self, account: str, container: str, prefix: str, client: ContainerClient | None
    ) -> None:
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)  # the same rules as keys: no ``..``, nothing odd
        self.account = account
        self.container = container
        self.prefix = f"{prefix}/" if prefix else ""
        self._client = client
        self._write_retention: WriteRetention | None = None

    @property
    def client(self) -> ContainerClient:
        if self._client is None:
            raise RuntimeError("this AzureBackend has no client (built for messages only)")
        return self._client

    def describe(self) -> str:
        return f"azure://{self.account}/{self.container}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _error(self, op: str, key: str, exc: Exception) -> Exception:
        """One vmvault error for what the SDK raised (see the module doc). Only the status
        and the service's error code are quoted: the SDK's text may hold a SAS URL."""
        where = self.describe()
        exc = _unwrap(exc)
        if _is_transient(exc):
            return TransientBackendError(f"{op} {key} in {where}: {type(exc).__name__}")
        if isinstance(exc, HttpResponseError) and exc.status_code is not None:
            status, code = exc.status_code, _code(exc)
            if code == "ContainerNotFound":
                return BucketMissing(
                    f"container {self.container!r} does not exist: create it first ({where})"
                )
            if status == 404:
                return ObjectMissing(f"object {key} is missing from {where}")
            if op == "create" and (status == 412 or code in _TAKEN_CODES):
                return ObjectExists(f"object {key} already exists in {where}")
            if op == "delete" and status == 409 and code.startswith("BlobImmutable"):
                # A container-level policy or legal hold (or a version-level one on a blob
                # whose delete the service refuses): it goes when the store lets it.
                return ObjectRetained(
                    f"the store retains {key} in {where} ({code}): it cannot be deleted yet"
                )
            if status in (408, 429) or status >= 500 or code in _TRANSIENT_CODES:
                return TransientBackendError(f"{op} {key} in {where}: {status} {code}")
            if status in (401, 403):
                if op in _WRITES and code in _NOT_PERMITTED_CODES:
                    return BackendReadOnly(f"the vault at {where} may not be written: {op} {key}")
                return BackendDenied(f"the vault at {where} may not be read ({code}): {op} {key}")
            return AzureStoreError(f"the store refused {op} {key} in {where}: {status} {code}")
        if isinstance(exc, ClientAuthenticationError):
            # Raised before sending: the request could not be signed (a malformed key).
            return BackendDenied(
                f"requests to {where} cannot be signed: check the account key"
                " (AZURE_STORAGE_KEY or the connection string's AccountKey)"
            )
        return AzureStoreError(f"the store failed {op} {key} in {where}: {type(exc).__name__}")

    def _policy_args(self, key: str) -> dict[str, Any]:
        """The immutability policy of an upload of ``key``, if the vault's rule covers it."""
        rule = self._write_retention
        if rule is None or not rule.covers(key):
            return {}
        from azure.storage.blob import ImmutabilityPolicy

        policy = ImmutabilityPolicy(expiry_time=rule.until(), policy_mode=_POLICY_MODES[rule.mode])
        return {"immutability_policy": policy}

    def put(self, key: str, data: Payload) -> None:
        full = self._key(key)
        try:
            self.client.upload_blob(full, _body(data), overwrite=True, **self._policy_args(key))
        except AzureError as exc:
            raise self._error("put", key, exc) from None

    def create(self, key: str, data: Payload) -> None:
        """Put an object only if the key is free; ``ObjectExists`` if it is taken."""
        full = self._key(key)
        try:
            # overwrite=False: the SDK sends If-None-Match: *, the service refuses a taken key
            self.client.upload_blob(full, _body(data), overwrite=False, **self._policy_args(key))
        except AzureError as exc:
            raise self._error("create", key, exc) from None

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            return b""  # no valid range for zero bytes
        full = self._key(key)
        try:
            if length is not None:
                stream = self.client.download_blob(full, offset=offset, length=length)
            elif offset:
                stream = self.client.download_blob(full, offset=offset)
            else:
                # No range at all: an empty blob answers a ranged GET with 416.
                stream = self.client.download_blob(full)
            data = stream.readall()
        except AzureError as exc:
            if isinstance(exc, HttpResponseError) and (
                exc.status_code == 416 or _code(exc) == "InvalidRange"
            ):
                if length is None:
                    return b""  # reading from the end, as a file read does
                raise CorruptObject(f"object {key} is shorter than expected (truncated)") from None
            raise self._error("get", key, exc) from None
        if length is not None and len(data) != length:
            raise CorruptObject(f"object {key} is shorter than expected (truncated)")
        return data

    def _properties(self, key: str) -> BlobProperties:
        try:
            return self.client.get_blob_client(self._key(key)).get_blob_properties()
        except AzureError as exc:
            raise self._error("head", key, exc) from None

    def exists(self, key: str) -> bool:
        try:
            self._properties(key)
        except ObjectMissing:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._properties(key).size)

    def modified(self, key: str) -> float:
        return float(self._properties(key).last_modified.timestamp())

    def list(self, prefix: str = "") -> Iterator[str]:
        start = len(self.prefix)
        try:
            # Metadata too: an account with a hierarchical namespace (Data Lake Gen2) lists
            # its directories as empty blobs marked hdi_isfolder, which are no vault objects.
            names = self.prefix + prefix
            blobs = self.client.list_blobs(
                name_starts_with=names, include=["metadata"], results_per_page=self.page_size
            )
            for blob in blobs:
                name: str = blob.name
                if name.endswith("/") or (blob.metadata or {}).get("hdi_isfolder") == "true":
                    continue
                yield name[start:]
        except AzureError as exc:
            raise self._error("list", prefix or "/", exc) from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_blob(self._key(key))
        except AzureError as exc:
            error = self._error("delete", key, exc)
            if isinstance(error, ObjectMissing):
                return  # already gone: no error, as the protocol asks
            raise error from None

    def check_bucket(self) -> None:
        """Fail with one clear line if the container is missing or closed to this credential.

        A listing of one name under the prefix, not Get Container Properties: listing is
        what every vault needs anyway (points, check, gc), so a credential good enough for
        the vault passes, whatever else it may not do."""
        try:
            pages = self.client.list_blob_names(
                name_starts_with=self.prefix, results_per_page=1
            ).by_page()
            next(iter(pages), None)
        except AzureError as exc:
            raise self._error("list", "/", exc) from None

    # -- version-level immutability (the Retaining capability) -------------------------

    def retention_support(self) -> RetentionSupport:
        feature = "Azure version-level immutability"
        try:
            props = self.client.get_container_properties()
        except AzureError as exc:
            raise self._error("head", "/", exc) from None
        if props.immutable_storage_with_versioning_enabled:
            return RetentionSupport(
                feature,
                True,
                f"container {self.container!r} has version-level immutability (untested by"
                " vmvault against Azure itself: Azurite has none)",
            )
        if props.has_immutability_policy or props.has_legal_hold:
            # A container-level policy or hold makes every blob read-only, the few vmvault
            # rewrites in place (settings, locks) included: backups would fail.
            return RetentionSupport(
                feature,
                False,
                f"container {self.container!r} has a container-level immutability policy or"
                " legal hold, which vmvault cannot work under (it rewrites its settings and"
                " locks in place); use version-level immutability instead",
            )
        return RetentionSupport(
            feature, False, f"container {self.container!r} has no version-level immutability"
        )

    def retain_writes(self, rule: WriteRetention | None) -> None:
        self._write_retention = rule

    def retention(self, key: str) -> StoreRetention | None:
        props = self._properties(key)
        policy = props.immutability_policy
        mode_name = str(getattr(policy.policy_mode, "value", policy.policy_mode) or "").lower()
        mode = _MODES_BY_POLICY.get(mode_name)  # "mutable" or none: no policy
        until = policy.expiry_time if mode is not None else None
        hold = bool(props.has_legal_hold)
        if mode is None and not hold:
            return None
        return StoreRetention(mode, until.astimezone(UTC) if until else None, hold)

    def retain(self, key: str, retention: StoreRetention) -> None:
        if retention.mode is None or retention.until is None:
            raise ValueError("a retention to set needs a mode and a date")
        from azure.storage.blob import ImmutabilityPolicy

        policy = ImmutabilityPolicy(
            expiry_time=retention.until, policy_mode=_POLICY_MODES[retention.mode]
        )
        try:
            self.client.get_blob_client(self._key(key)).set_immutability_policy(policy)
        except AzureError as exc:
            raise self._error("retain", key, exc) from None

    def list_leftovers(self) -> builtins.list[str]:
        """None: a failed Put Blob leaves nothing; blocks staged for a larger upload that
        never committed are not blobs, and the service drops them after a week."""
        return []


def parse_azure_url(url: str) -> tuple[str, str, str]:
    """``azure://account/container[/prefix]`` as (account, container, prefix)."""
    usage = "use azure://ACCOUNT/CONTAINER[/PREFIX]"
    rest = url.removeprefix("azure://")
    account, _, rest = rest.partition("/")
    container, _, prefix = rest.partition("/")
    if not account or not container:
        raise UsageError(f"no account or container in vault URL {url!r}: {usage}")
    if not _ACCOUNT.match(account):
        raise UsageError(
            f"invalid storage account name {account!r} in vault URL {url!r}:"
            " 3 to 24 lowercase letters and digits"
        )
    if not _CONTAINER.match(container):
        raise UsageError(
            f"invalid container name {container!r} in vault URL {url!r}: 3 to 63 lowercase"
            " letters, digits and single hyphens"
        )
    prefix = prefix.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except UsageError:
            raise UsageError(f"invalid prefix in vault URL {url!r}") from None
    return account, container, prefix


def connection_string_account(connection_string: str) -> str | None:
    """The ``AccountName`` a connection string names, if it names one (a SAS-only string
    may not). Nothing else is read from it: the rest is the SDK's, secrets included."""
    for part in connection_string.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip().lower() == "accountname":
            return value.strip()
    if "usedevelopmentstorage=true" in connection_string.replace(" ", "").lower():
        return "devstoreaccount1"  # the emulator's well-known account
    return None
