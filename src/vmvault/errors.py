"""The errors a user can act on.

Every failure that comes from input (a path, a passphrase, a vault's contents) is one of
these; the CLI prints ``error: <message>`` and exits with ``exit_code``, the API returns
``{"error": {"code": ..., "message": ...}}`` with ``http_status``, and a queued job that
fails with a ``transient`` one is tried again later. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class VmvaultError(Exception):
    """Base class: ``code`` is stable (scripts match on it), ``message`` is for people."""

    code = "error"
    exit_code = 1
    http_status = 500  # what the API answers: the server or its vault could not do it
    transient = False  # worth another try after a pause (a busy VM or hypervisor, a signal)

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


class ImageFormatRefused(UsageError):
    """A disk image's format cannot be taken from its header without the user's word: a
    format vmvault does not read, or a backing file a detected format would follow."""

    code = "image_format_refused"


class FormatMismatch(ImageFormatRefused):
    """A disk image's header says another format than the one declared for it."""

    code = "format_mismatch"


class WrongPassphrase(VmvaultError):
    code = "wrong_passphrase"


class PassphraseMissing(VmvaultError):
    code = "passphrase_missing"


class DiskNotFound(NotFound):
    code = "disk_not_found"
    exit_code = 1  # older than NotFound's 2, and scripts test for it


class PointNotFound(NotFound):
    code = "point_not_found"
    exit_code = 1  # older than NotFound's 2, and scripts test for it


class ObjectMissing(VmvaultError):
    """A vault object the index or a manifest refers to is gone."""

    code = "object_missing"


class CorruptObject(VmvaultError):
    """A vault object failed authentication, its checksum, or its framing."""

    code = "corrupt_object"


EXIT_DAMAGE = 3  # the exit code of found damage: verify, check, a restore that met it


class DamageFound(CorruptObject):
    """``verify`` found the point object itself damaged."""

    code = "point_damaged"
    exit_code = EXIT_DAMAGE


class RestoreDamaged(VmvaultError):
    """A restore met damaged or missing chunks; ``ranges`` are the affected byte ranges."""

    code = "restore_damaged"
    exit_code = EXIT_DAMAGE

    def __init__(self, message: str, ranges: list[tuple[int, int]]) -> None:
        super().__init__(message)
        self.ranges = ranges


COST_MODEL_OFF = "the cost model is switched off in the inventory ([pricing] enabled = false)"


class CostModelOff(NotFound):
    """``[pricing] enabled = false``: there is no cost report to give."""

    code = "cost_model_off"


class CostModelError(UsageError, ValueError):
    """Figures the cost model cannot price (a negative size, a duplicate VM, bad prices)."""

    code = "bad_cost_input"
