"""The pre/post script configuration, in Azure's VMSnapshotScriptPluginConfig.json format.

Users who come from Azure Backup already have this file; reading it unchanged (same field
names, same defaults, same limits, same ownership and mode rules) lets them move without
rewriting anything. Python code sees snake_case attributes.

The file decides which programs run as root, so it is refused unless it is owned by root
and has mode 0600, as Azure does. Validation is strict (``"30"`` is not a number,
``1`` is not ``true``) and unknown fields are refused, so that a typo cannot silently fall
back to a default.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vmvault.consistency.errors import ScriptConfigError

INCORRECT_CONFIG = "IncorrectJSONConfigFile"
CONFIG_PERMISSION = "InsufficientPermissionforConfig"
CONFIG_MODE = 0o600
DEFAULT_CONFIG_PATH = "/etc/azure/VMSnapshotScriptPluginConfig.json"


class ScriptConfig(BaseModel):
    """One VM's pre/post scripts and quiescing options (Azure names in JSON, defaults too).

    A script location of ``""`` or ``null`` means "no script", as in Azure's template.
    Empty strings in the params lists are dropped: Azure's template ships ``["", ""]`` as
    placeholders and a script should not receive them as arguments.
    """

    model_config = ConfigDict(
        frozen=True, strict=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    plugin_name: Literal["ScriptRunner"] = Field(default="ScriptRunner", alias="pluginName")
    pre_script_location: str | None = Field(default=None, alias="preScriptLocation")
    post_script_location: str | None = Field(default=None, alias="postScriptLocation")
    pre_script_params: list[str] = Field(default_factory=list, alias="preScriptParams")
    post_script_params: list[str] = Field(default_factory=list, alias="postScriptParams")
    pre_script_no_of_retries: int = Field(default=0, ge=0, alias="preScriptNoOfRetries")
    post_script_no_of_retries: int = Field(default=0, ge=0, alias="postScriptNoOfRetries")
    timeout_in_seconds: int = Field(default=30, ge=1, le=1800, alias="timeoutInSeconds")
    continue_backup_on_failure: bool = Field(default=True, alias="continueBackupOnFailure")
    fs_freeze_enabled: bool = Field(default=True, alias="fsFreezeEnabled")
    scripts_execution_poll_time_seconds: int = Field(
        default=3, ge=1, le=5, alias="ScriptsExecutionPollTimeSeconds"
    )

    @field_validator("pre_script_location", "post_script_location", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("pre_script_location", "post_script_location")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("pre_script_params", "post_script_params")
    @classmethod
    def _drop_placeholders(cls, value: list[str]) -> list[str]:
        return [p for p in value if p != ""]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "script config") -> ScriptConfig:
        """Validate a config given as a mapping (e.g. embedded in an inventory file).

        Raises `ScriptConfigError` (``IncorrectJSONConfigFile``) naming ``source``, the
        field and the problem in one line.
        """
        if not isinstance(data, Mapping):
            raise ScriptConfigError(
                INCORRECT_CONFIG,
                f"{source}: expected a JSON object, found {type(data).__name__}",
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ScriptConfigError(INCORRECT_CONFIG, f"{source}: {_describe(exc)}") from None

    def to_dict(self) -> dict[str, Any]:
        """The config in Azure's JSON field names (what `load_script_config` reads back)."""
        return self.model_dump(by_alias=True)


def _describe(exc: ValidationError) -> str:
    """Turn pydantic's multi-line report into one line: ``field: problem (got value)``."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"{field}: unknown field")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = repr(err.get("input"))
        if len(got) > 60:
            got = got[:57] + "..."
        parts.append(f"{field}: {msg} (got {got})")
    return "; ".join(parts)


def load_script_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> ScriptConfig:
    """Read and check a VMSnapshotScriptPluginConfig.json file.

    The ownership and mode are checked on the opened file itself (``fstat``), so the file
    that is checked is the file that is read.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ScriptConfigError(INCORRECT_CONFIG, f"{name}: config file not found") from None
    except OSError as exc:
        raise ScriptConfigError(
            INCORRECT_CONFIG, f"{name}: cannot open config file: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ScriptConfigError(INCORRECT_CONFIG, f"{name}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != 0:
            raise ScriptConfigError(
                CONFIG_PERMISSION,
                f"{name}: config file must be owned by root (uid 0), found uid {st.st_uid}"
                f" (mode {mode:04o})",
            )
        if mode != CONFIG_MODE:
            raise ScriptConfigError(
                CONFIG_PERMISSION,
                f"{name}: config file must have mode 0600, found {mode:04o}",
            )
        raw = fh.read()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = ""
        if isinstance(exc, json.JSONDecodeError):
            where = f"line {exc.lineno} column {exc.colno}: "
            reason = exc.msg
        else:
            reason = "not UTF-8 text"
        raise ScriptConfigError(INCORRECT_CONFIG, f"{name}: {where}{reason}") from None
    except RecursionError:  # [[[[...: the parser's recursion, not a crash of ours
        raise ScriptConfigError(INCORRECT_CONFIG, f"{name}: nested too deeply") from None
    return ScriptConfig.from_dict(data, source=str(Path(name)))
