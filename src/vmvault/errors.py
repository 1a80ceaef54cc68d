"""The errors a user can act on.

Every failure that comes from input (a path, a passphrase, a vault's contents) is one of
these; the CLI prints ``error: <message>`` and exits with ``exit_code``, the API returns
``{"error": {"code": ..., "message": ...}}``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class VmvaultError(Exception):
    """Base class: ``code`` is stable (scripts match on it), ``message`` is for people."""

    code = "error"
    exit_code = 1
    http_status = 500  # what the API answers: the server or its vault could not do it

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(VmvaultError):
    code = "bad_input"
    exit_code = 2
    http_status = 400


class NotFound(UsageError):
    """A name or id that is not there (a VM, a job, a point, a token)."""

    code = "not_found"
    http_status = 404


class Conflict(UsageError):
    """The request is valid but the state forbids it now (immutable vault, job finished)."""

    code = "conflict"
    http_status = 409


class VaultNotFound(VmvaultError):
    code = "vault_not_found"


class VaultExists(VmvaultError):
    code = "vault_exists"


class UnsupportedFormat(VmvaultError):
    code = "unsupported_format"


class WrongPassphrase(VmvaultError):
    code = "wrong_passphrase"


class PassphraseMissing(VmvaultError):
    code = "passphrase_missing"


class DiskNotFound(VmvaultError):
    code = "disk_not_found"
    http_status = 404


class PointNotFound(VmvaultError):
    code = "point_not_found"
    http_status = 404


class ObjectMissing(VmvaultError):
    """A vault object the index or a manifest refers to is gone."""

    code = "object_missing"


class CorruptObject(VmvaultError):
    """A vault object failed authentication, its checksum, or its framing."""

    code = "corrupt_object"


class DamageFound(CorruptObject):
    """``verify`` found the point object itself damaged: the exit code of found damage."""

    code = "point_damaged"
    exit_code = 3


class RestoreDamaged(VmvaultError):
    """A restore met damaged or missing chunks; ``ranges`` are the affected byte ranges."""

    code = "restore_damaged"

    def __init__(self, message: str, ranges: list[tuple[int, int]]) -> None:
        super().__init__(message)
        self.ranges = ranges
