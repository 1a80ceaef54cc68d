"""Consistency of a VM backup: Azure-compatible pre/post scripts and file-system freeze
(``fsfreeze`` on the host's mount points, or the QEMU guest agent inside a live guest).

`quiesce` wraps the snapshot step and reports the level the recovery point reached
(application, file-system or crash) with a reason; `decide_level` is the same decision
as a pure function of plain data.
"""

from vmvault.consistency.config import ScriptConfig, load_script_config
from vmvault.consistency.errors import ConsistencyError, FreezeError, ScriptConfigError
from vmvault.consistency.freeze import Freezer, FsFreezer, NoFreezer
from vmvault.consistency.guest_agent import GuestAgent, GuestAgentError, GuestAgentFreezer
from vmvault.consistency.level import (
    STOPPED_REASON,
    Consistency,
    FreezeState,
    Level,
    decide_level,
    pre_failure_policy,
)
from vmvault.consistency.scripts import Phase, ScriptResult, check_script, run_phase, run_script
from vmvault.consistency.session import Quiescence, quiesce

__all__ = [
    "STOPPED_REASON",
    "Consistency",
    "ConsistencyError",
    "FreezeError",
    "FreezeState",
    "Freezer",
    "FsFreezer",
    "GuestAgent",
    "GuestAgentError",
    "GuestAgentFreezer",
    "Level",
    "NoFreezer",
    "Phase",
    "Quiescence",
    "ScriptConfig",
    "ScriptConfigError",
    "ScriptResult",
    "check_script",
    "decide_level",
    "load_script_config",
    "pre_failure_policy",
    "quiesce",
    "run_phase",
    "run_script",
]
