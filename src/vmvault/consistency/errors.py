"""Errors of the consistency framework, with the codes Azure Backup users already know.

The codes are the ones Azure prints (``Pre-ScriptTimeout``, ``IncorrectJSONConfigFile``...)
so that a runbook written for Azure keeps matching; each error carries its code per
instance because one class covers the pre- and the post-script variants.
"""

from __future__ import annotations

from typing import Any

from vmvault.errors import VmvaultError


class _CodedError(VmvaultError):
    """A `VmvaultError` whose stable ``code`` is chosen when it is raised."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ScriptConfigError(_CodedError):
    """The script configuration file is missing, unsafe, or not what Azure's format allows.

    Codes: ``IncorrectJSONConfigFile`` (missing, malformed, wrong field) and
    ``InsufficientPermissionforConfig`` (not owned by root or mode not 0600).
    """

    code = "IncorrectJSONConfigFile"


class ConsistencyError(_CodedError):
    """The backup must fail: a pre-script failed and ``continueBackupOnFailure`` is false.

    ``code`` is the failing script's code, e.g. ``Pre-ScriptTimeout``; ``scripts`` holds
    the results of the scripts that ran (the post-script still runs before this is raised).
    """

    code = "Pre-ScriptExecutionFailed"

    def __init__(
        self, code: str, message: str, scripts: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(code, message)
        self.scripts = scripts or []
        """What each script that ran did (``ScriptResult.to_dict()``), for the job log."""


class FreezeError(_CodedError):
    """A file system could not be frozen (``FsFreezeFailed``) or thawed (``FsThawFailed``)."""

    code = "FsFreezeFailed"

    def __init__(self, message: str, code: str = "FsFreezeFailed") -> None:
        super().__init__(code, message)
