"""Backup policies as pure logic: schedules, GFS retention, protection and immutability.

Nothing here reads a clock, a file or a vault: every function takes ``now`` (an aware
datetime) and plain data, so the scheduler, the pruner and the CLI can share it and tests can
pin every instant. See ``model`` for the configuration, ``schedule`` for due times,
``retention`` for what to keep and ``protection`` for stop/soft-delete/undelete/purge.
"""

from vmvault.policy.errors import ImmutableVaultError, PolicyError, ProtectionStateError
from vmvault.policy.model import (
    DEFAULT_POLICY,
    HOURLY_INTERVALS,
    MAX_POINTS_PER_VM,
    WEEKDAYS,
    Immutability,
    Policy,
    Retention,
    Schedule,
    ScheduleKind,
    Weekday,
    parse_policy,
)
from vmvault.policy.protection import (
    PURGE_ALERT_BEFORE,
    SOFT_DELETE_DAYS,
    SOFT_DELETE_RANGE,
    ProtectionState,
    ProtectionStatus,
    check_retention_change,
    due_for_purge,
    purge,
    resume_protection,
    set_immutability,
    stop_protection,
    undelete,
    upcoming_purge_alert,
)
from vmvault.policy.retention import (
    REASONS,
    Point,
    PrunePlan,
    Reason,
    prune_plan,
    retention_shortened,
    select_kept,
)
from vmvault.policy.schedule import due_times, local_to_utc, missed_runs, next_due

__all__ = [
    "DEFAULT_POLICY",
    "HOURLY_INTERVALS",
    "MAX_POINTS_PER_VM",
    "PURGE_ALERT_BEFORE",
    "REASONS",
    "SOFT_DELETE_DAYS",
    "SOFT_DELETE_RANGE",
    "WEEKDAYS",
    "Immutability",
    "ImmutableVaultError",
    "Point",
    "Policy",
    "PolicyError",
    "ProtectionState",
    "ProtectionStateError",
    "ProtectionStatus",
    "PrunePlan",
    "Reason",
    "Retention",
    "Schedule",
    "ScheduleKind",
    "Weekday",
    "check_retention_change",
    "due_for_purge",
    "due_times",
    "local_to_utc",
    "missed_runs",
    "next_due",
    "parse_policy",
    "prune_plan",
    "purge",
    "resume_protection",
    "retention_shortened",
    "select_kept",
    "set_immutability",
    "stop_protection",
    "undelete",
    "upcoming_purge_alert",
]
