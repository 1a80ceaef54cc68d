"""Retries of transient storage failures, around any backend.

The policy (also in docs/ARCHITECTURE.md):

- **Transient**, retried: ``TransientBackendError`` (what a store's protocol marks
  retryable: throttling, 5xx, a dropped request), ``TimeoutError``, ``ConnectionError``, and
  ``OSError`` with errno EAGAIN, EINTR, ETIMEDOUT or ESTALE (a network file system that lost
  its file handle: the next attempt opens the path again).
- **Not transient**, failing at once with one vmvault error: a vmvault error passes as it
  is (``ObjectMissing``: a vanished object does not come back; ``CorruptObject``; a full or
  read-only store); any other ``OSError`` becomes one: ENOSPC/EDQUOT ``backend_full``,
  EROFS (and EACCES/EPERM on writes) ``vault_read_only``, EACCES/EPERM on reads
  ``permission_denied``, the rest ``backend_error``. EIO is not retried: from a local disk
  it is a media error that retries only hide for a while.
- At most ``attempts`` calls (6). Before attempt n+1 a full-jitter exponential backoff:
  a sleep drawn from [0, min(max_delay, base_delay * 2**(n-1))] (0.25 s doubling to 8 s),
  so many threads or hosts that failed together do not retry together. No attempt starts
  more than ``deadline`` seconds (60) after the first one. Then ``backend_unavailable``.

Every operation is safe to repeat: objects are immutable or rewritten whole, so a retried
``put`` stores the same bytes again (over a prefix a non-atomic store may have left), a
retried ``delete`` of what the failed attempt removed is no error, and a listing is read
whole by each attempt (a paged listing that fails half-way is not resumed with duplicates).

A small loop rather than ``tenacity``: the policy is a few lines, it needs the errno
classification and the one-line error at the end anyway, and it adds no dependency.
"""

from __future__ import annotations

import builtins
import errno
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from vmvault.backends.base import (
    Backend,
    Payload,
    Retaining,
    RetentionSupport,
    StoreRetention,
    TransientBackendError,
    WriteRetention,
    retaining,
)
from vmvault.backends.local import BackendDenied, BackendFull, BackendReadOnly
from vmvault.errors import VmvaultError

DEFAULT_ATTEMPTS = 6
DEFAULT_BASE_DELAY = 0.25
DEFAULT_MAX_DELAY = 8.0
DEFAULT_DEADLINE = 60.0

TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE})
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED = frozenset({errno.EACCES, errno.EPERM})
_WRITES = frozenset({"put", "delete", "retain"})

log = logging.getLogger("vmvault")
T = TypeVar("T")


class BackendUnavailable(VmvaultError):
    """The store kept failing with transient errors until the retries were spent."""

    code = "backend_unavailable"
    # A job it ends is queued again after the queue's backoff (minutes, where these retries
    # last a minute at most): an outage of the store is not the job's failure, and the run
    # after it adopts the packs this one stored.
    transient = True


class BackendError(VmvaultError):
    """The store failed in a way no retry mends (an I/O error, a broken mount)."""

    code = "backend_error"


def is_transient(exc: BaseException) -> bool:
    """Whether repeating the call that raised ``exc`` may succeed."""
    if isinstance(exc, TransientBackendError | TimeoutError | ConnectionError):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TransientBackendError):
        text = exc.reason  # the operation and the store are named by the caller's message
    elif isinstance(exc, VmvaultError):
        text = exc.message
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # one line, whatever the store said


def _as_vmvault_error(op: str, key: str, where: str, exc: OSError) -> VmvaultError:
    """One clear error for an OSError no retry mends."""
    if exc.errno in _FULL:
        return BackendFull(f"no space left writing {key} in {where}")
    if exc.errno == errno.EROFS or (exc.errno in _DENIED and op in _WRITES):
        why = "is read-only" if exc.errno == errno.EROFS else "may not be written"
        return BackendReadOnly(f"the vault at {where} {why}: cannot {op} {key}")
    if exc.errno in _DENIED:
        return BackendDenied(f"the vault at {where} may not be read: {key}")
    return BackendError(f"the vault's storage ({where}) failed: {op} {key}: {_reason(exc)}")


class RetryingBackend:
    """A backend whose calls are repeated after transient failures (see the module doc)."""

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        if attempts < 1 or base_delay < 0 or max_delay < 0 or deadline < 0:
            raise ValueError("attempts must be >= 1 and the delays >= 0")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.deadline = deadline
        self._jitter = random.Random()

    def _call(self, op: str, key: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return action()
            except (TransientBackendError, OSError) as exc:
                if not is_transient(exc):
                    assert isinstance(exc, OSError)
                    raise _as_vmvault_error(op, key, self.inner.describe(), exc) from exc
                cause: BaseException = exc
            elapsed = time.monotonic() - started
            cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
            delay = self._jitter.uniform(0, cap)
            if attempt >= self.attempts or elapsed + delay > self.deadline:
                raise BackendUnavailable(
                    f"the vault's storage ({self.inner.describe()}) kept failing: {op} {key}: "
                    f"{_reason(cause)} ({attempt} attempts in {elapsed:.1f} s)"
                ) from cause
            log.debug("retrying %s %s in %.2f s: %s", op, key, delay, _reason(cause))
            time.sleep(delay)

    def describe(self) -> str:
        return self.inner.describe()

    @property
    def parallel_writes(self) -> int:
        """The inner backend's hint (see ``base.Backend``): retries change nothing there."""
        return int(getattr(self.inner, "parallel_writes", 1))

    def put(self, key: str, data: Payload) -> None:
        self._call("put", key, lambda: self.inner.put(key, data))

    def create(self, key: str, data: Payload) -> None:
        """A creation-only put (see ``base.put_new``): the inner backend's ``create`` where
        it has one (a store that refuses a taken key), else its plain ``put``."""
        inner_create: Callable[[str, Payload], None] = getattr(self.inner, "create", None) or (
            self.inner.put
        )
        failed_before = False

        def attempt() -> None:
            nonlocal failed_before
            try:
                inner_create(key, data)
            except VmvaultError as exc:
                # After an attempt whose answer was lost, "already exists" is most likely
                # that attempt's own object: creation-only keys are unique names.
                if exc.code == "object_exists" and failed_before:
                    return
                failed_before = is_transient(exc)
                raise
            except (TimeoutError, ConnectionError, OSError) as exc:
                failed_before = is_transient(exc)
                raise

        self._call("create", key, attempt)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call("get", key, lambda: self.inner.get(key, offset, length))

    def exists(self, key: str) -> bool:
        return self._call("exists", key, lambda: self.inner.exists(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        # Read whole by each attempt: a listing that fails half-way starts again.
        keys = self._call("list", prefix or "/", lambda: builtins.list(self.inner.list(prefix)))
        return iter(keys)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def size(self, key: str) -> int:
        return self._call("size", key, lambda: self.inner.size(key))

    def modified(self, key: str) -> float:
        return self._call("modified", key, lambda: self.inner.modified(key))

    # -- store retention (forwarded when the inner backend has it) ------------------------

    def retaining(self) -> Retaining | None:
        """This backend, as the inner backend's retention capability with retries, or None
        when the inner backend has none (a directory)."""
        return self if retaining(self.inner) is not None else None

    def _inner_retaining(self) -> Retaining:
        inner = retaining(self.inner)
        if inner is None:
            raise TypeError(f"{self.inner.describe()} cannot retain objects")
        return inner

    def retention_support(self) -> RetentionSupport:
        inner = self._inner_retaining()
        return self._call("head", "/", inner.retention_support)

    def retain_writes(self, rule: WriteRetention | None) -> None:
        self._inner_retaining().retain_writes(rule)

    def retention(self, key: str) -> StoreRetention | None:
        inner = self._inner_retaining()
        return self._call("head", key, lambda: inner.retention(key))

    def retain(self, key: str, retention: StoreRetention) -> None:
        inner = self._inner_retaining()
        self._call("retain", key, lambda: inner.retain(key, retention))
