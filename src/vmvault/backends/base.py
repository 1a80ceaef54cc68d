"""The interface every vault backend implements: immutable objects by key, nothing more.

Keys are ``/``-separated relative names such as ``packs/ab/ab12...``. A backend knows nothing
of packs, chunks or VMs; it stores bytes durably and atomically: after ``put`` returns, the
object is complete and survives a crash, and a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

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
