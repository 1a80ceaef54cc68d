"""The interface every vault backend implements: immutable objects by key, nothing more.

Keys are ``/``-separated relative names such as ``packs/ab/ab12...``. A backend knows nothing
of packs, chunks or VMs; it stores bytes durably and atomically: after ``put`` returns, the
object is complete and survives a crash, and a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, cast

from vmvault.errors import UsageError, VmvaultError

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def validate_key(key: str) -> str:
    """Refuse keys that could name something outside the vault (``..``, absolute paths)."""
    parts = key.split("/")
    if not key or any(not _KEY_PART.match(p) or p in (".", "..") for p in parts):
        raise UsageError(f"invalid object key {key!r}")
    return key


class TransientBackendError(VmvaultError):
    """A failure the store calls temporary: a throttled, dropped or timed-out request.

    Backends raise it for what their protocol marks retryable (HTTP 408, 429, 5xx, a reset
    connection); ``backends.retry.RetryingBackend`` repeats the call. It may come before or
    after the operation took effect, so every operation must be safe to repeat."""

    code = "backend_transient"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        # What went wrong in a few words ("503 SlowDown", "the connection was cut"), for a
        # caller that names the operation and the store itself (RetryingBackend's last word).
        self.reason = reason or message


class BucketMissing(VmvaultError):
    """The vault URL names a bucket (S3) or container (Azure) the store does not have:
    vmvault never creates one."""

    code = "bucket_missing"


class ObjectExists(VmvaultError):
    """A creation-only put found the key already taken (the store refused
    ``If-None-Match: *``); ``put_new`` leaves the other writer's object alone."""

    code = "object_exists"


class ObjectRetained(VmvaultError):
    """The store refused to delete an object it still retains (a retention date, an
    immutability policy, a legal hold): nothing was deleted, and the object can go once the
    store lets it. Not a failure of the store: callers that clean up leave it for later."""

    code = "object_retained"
    http_status = 409


Payload = bytes | bytearray | memoryview | Sequence[bytes]  # one buffer, or parts in order


class Backend(Protocol):
    """Immutable-object storage. Implementations must be safe to call from many threads.

    Every call may be repeated after a failure (see ``backends.retry``): a put of the same
    bytes again, a delete of what is already gone. ``put`` must be atomic: a put that fails
    leaves the old object or none, never a prefix under the key (the objects vmvault
    rewrites in place, settings and protection records, depend on it).

    Optional, looked up with ``getattr``: ``create`` (see ``put_new``) and
    ``parallel_writes``, how many pack uploads at once pay off on this store (1 if absent;
    read by ``Vault.pack_writer``)."""

    def put(self, key: str, data: Payload) -> None:
        """Store ``data`` under ``key`` atomically and durably (replacing nothing half-way)."""

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return the object's bytes (or a range); raise ObjectMissing if absent."""

    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (a directory-like prefix ending in ``/``, or empty)."""

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""

    def size(self, key: str) -> int:
        """The object's size in bytes."""

    def modified(self, key: str) -> float:
        """When the object was written (seconds since the epoch)."""

    def describe(self) -> str:
        """Where the objects live, for messages (never contains secrets)."""


def innermost(backend: Backend) -> Backend:
    """The store under a backend's wrappers (retries, request counting, the local cache),
    each of which names what it wraps ``inner``: for what only the store itself offers."""
    while (inner := getattr(backend, "inner", None)) is not None:
        backend = inner
    return backend


def put_new(backend: Backend, key: str, data: Payload) -> None:
    """Put an object under a key nobody else writes (a pack, an index object, a point).

    When the put fails, whatever it may have left under the key is removed at once (best
    effort): a prefix from a store without atomic puts, or the whole object of a put whose
    success was never reported. Nothing can rely on it yet, and an unreadable leftover
    would be reported by ``check`` (or, for a point, be a damaged point) for ever.

    A backend with a ``create`` method (S3 and Azure: ``If-None-Match: *``) has the store
    refuse a key already taken (``ObjectExists``); that refusal leaves the other object
    alone (it is not ours)."""
    create: Callable[[str, Payload], None] | None = getattr(backend, "create", None)
    try:
        if create is not None:
            create(key, data)
        else:
            backend.put(key, data)
    except VmvaultError as exc:
        if exc.code != "object_exists":
            with contextlib.suppress(Exception):
                backend.delete(key)
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            backend.delete(key)
        raise


# -- store retention: an optional capability -------------------------------------------

# GOVERNANCE (S3) / Unlocked (Azure): whoever holds a special permission may still remove or
# shorten it. COMPLIANCE (S3) / Locked (Azure): nobody can, the account's owner included,
# until the date has passed.
RetentionMode = Literal["governance", "compliance"]

# How much longer than asked a retention is set for, so that the daily maintenance extends
# each object about once a week rather than every day (a request per object each time).
RETENTION_MARGIN = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class RetentionSupport:
    """What the store behind a vault can do to keep objects from deletion."""

    feature: str  # what the store calls it: "S3 Object Lock", "Azure version-level immutability"
    available: bool
    detail: str  # one sentence: what it keeps, or why it is not there
    note: str = ""  # something the user should know even when it is there


@dataclass(frozen=True, slots=True)
class StoreRetention:
    """One object's retention as the store reports it."""

    mode: RetentionMode | None  # None: no retention date (perhaps a legal hold)
    until: datetime | None
    legal_hold: bool = False

    def active(self, now: datetime | None = None) -> bool:
        """Whether the store refuses, now, to let this version be removed for good."""
        now = now or datetime.now(UTC)
        return self.legal_hold or (self.until is not None and self.until > now)

    def describe(self) -> str:
        """`` until <date>`` or `` (a legal hold)``, to follow an object's name."""
        if self.legal_hold:
            return " (a legal hold)"
        return f" until {self.until.isoformat(timespec='seconds')}" if self.until else ""


@dataclass(frozen=True, slots=True)
class WriteRetention:
    """Which objects a backend writes with a retention date, and for how long.

    ``prefixes`` are key prefixes (``packs/``) or whole keys (``config``): the vault names
    them (``vault/store_retention.py``); the backend knows nothing of what they hold."""

    mode: RetentionMode
    days: int
    prefixes: tuple[str, ...]

    def covers(self, key: str) -> bool:
        return any(key == p or (p.endswith("/") and key.startswith(p)) for p in self.prefixes)

    def until(self, now: datetime | None = None) -> datetime:
        # Whole seconds: S3 keeps retention dates to the second, and an extension compared
        # with a date the store rounded must not look shorter than it is.
        now = (now or datetime.now(UTC)).replace(microsecond=0)
        return now + timedelta(days=self.days) + RETENTION_MARGIN


class Retaining(Protocol):
    """An optional Backend capability, like ``create``: a store that can keep objects from
    deletion for a time (S3 Object Lock, Azure version-level immutability).

    On both, deleting a retained object through the ordinary API still "works": it hides the
    object (an S3 delete marker, an Azure previous version) and the retained version stays,
    readable by its version id, until its date has passed. A store that refuses the delete
    instead makes ``delete`` raise ``ObjectRetained``."""

    def retention_support(self) -> RetentionSupport:
        """Whether the bucket or container can retain objects (one request to the store)."""

    def retain_writes(self, rule: WriteRetention | None) -> None:
        """From now on write the objects ``rule`` covers with its retention (None: none)."""

    def retention(self, key: str) -> StoreRetention | None:
        """The current version's retention, None when it has none; ``ObjectMissing``."""

    def retain(self, key: str, retention: StoreRetention) -> None:
        """Set or extend the current version's retention (stores refuse to shorten one)."""


def retaining(backend: Backend) -> Retaining | None:
    """The backend's retention capability, if its store has one (through any wrapper that
    offers ``retaining``, such as ``RetryingBackend``), else None (a directory)."""
    unwrap: Callable[[], Retaining | None] | None = getattr(backend, "retaining", None)
    if unwrap is not None:
        return unwrap()
    if callable(getattr(backend, "retention_support", None)):
        return cast("Retaining", backend)
    return None
