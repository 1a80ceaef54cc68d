"""Deciding the consistency level of a recovery point, from plain facts.

Kept free of processes and signals so that every combination can be tested with data:
the VM's state, what each script did, and what happened to the file-system freeze.
The rules are Azure Backup's:

- application: the pre-script (and the post-script, if there is one) succeeded, and the
  file systems were frozen or no freeze was asked for / available;
- file-system: scripts absent or failed, but the freeze worked;
- crash: the VM was stopped, or nothing could be quiesced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vmvault.consistency.scripts import ScriptResult

Level = Literal["application", "file-system", "crash"]
FreezeState = Literal["frozen", "disabled", "unavailable", "failed", "skipped"]
"""What became of the freeze: ``frozen`` (held during the snapshot), ``disabled``
(fsFreezeEnabled=false), ``unavailable`` (no freezer for this VM), ``failed`` (tried and
failed, or thawed early), ``skipped`` (not attempted: VM stopped or crash fallback)."""
PreFailurePolicy = Literal["continue", "abort", "crash"]

STOPPED_REASON = "VM is stopped: disks read from storage directly"


@dataclass(frozen=True)
class Consistency:
    """The level a recovery point reached and one sentence saying why."""

    level: Level
    reason: str

    def to_dict(self) -> dict[str, str]:
        """The form stored in each recovery point as ``consistency``."""
        return {"level": self.level, "reason": self.reason}


def pre_failure_policy(
    pre: ScriptResult | None, *, continue_on_failure: bool, single_disk: bool
) -> PreFailurePolicy:
    """What a failed pre-script means for the backup.

    ``continue`` (it did not fail, or continueBackupOnFailure=true), ``abort`` (the backup
    must fail), or ``crash`` (single-disk VM: Azure takes a crash-consistent point instead).
    """
    if pre is None or pre.ok or continue_on_failure:
        return "continue"
    return "crash" if single_disk else "abort"


def decide_level(
    *,
    vm_running: bool,
    pre: ScriptResult | None = None,
    post: ScriptResult | None = None,
    freeze: FreezeState = "skipped",
    freeze_detail: str = "",
    continue_on_failure: bool = True,
    single_disk: bool = False,
) -> Consistency:
    """The level and reason for what happened (see the module's docstring for the rules)."""
    if not vm_running:
        return Consistency("crash", STOPPED_REASON)
    policy = pre_failure_policy(
        pre, continue_on_failure=continue_on_failure, single_disk=single_disk
    )
    if pre is not None and policy != "continue":
        outcome = (
            "on a single-disk VM: fell back to crash-consistent, nothing quiesced"
            if policy == "crash"
            else "the backup fails"
        )
        parts = [f"{pre.message}; continueBackupOnFailure=false {outcome}"]
        if post is not None and not post.ok:
            parts.append(post.message)
        return Consistency("crash", "; ".join(parts))

    parts = _script_parts(pre, post, continue_on_failure)
    parts.append(_freeze_part(freeze, freeze_detail))
    scripts_ok = pre is not None and pre.ok and (post is None or post.ok)
    if scripts_ok and freeze in ("frozen", "disabled", "unavailable"):
        level: Level = "application"
    elif freeze == "frozen":
        level = "file-system"
    else:
        level = "crash"
        if not scripts_ok and freeze != "failed":
            parts[-1] += ": nothing could be quiesced"
    return Consistency(level, "; ".join(parts))


def _script_parts(
    pre: ScriptResult | None, post: ScriptResult | None, continue_on_failure: bool
) -> list[str]:
    if pre is None and post is None:
        return ["no pre/post scripts configured"]
    if pre is not None and pre.ok and post is not None and post.ok:
        return ["pre- and post-script succeeded"]
    parts = []
    if pre is None:
        parts.append("no pre-script configured")
    elif pre.ok:
        parts.append("pre-script succeeded")
    else:
        flag = "true" if continue_on_failure else "false"
        parts.append(f"{pre.message}; continueBackupOnFailure={flag}")
    if post is None:
        parts.append("no post-script configured")
    elif post.ok:
        parts.append("post-script succeeded")
    else:
        parts.append(post.message)
    return parts


def _freeze_part(freeze: FreezeState, detail: str) -> str:
    if freeze == "frozen":
        return f"file systems frozen ({detail})" if detail else "file systems frozen"
    if freeze == "disabled":
        return "file-system freeze disabled (fsFreezeEnabled=false)"
    if freeze == "unavailable":
        return "no file-system freeze available"
    if freeze == "failed":
        return f"file-system freeze failed: {detail}" if detail else "file-system freeze failed"
    return "file systems not frozen"
