"""The fleet at a glance: each VM's protection state, last backup, consistency and next run.

A read model shared by the API, the dashboard and ``vmvault vm list --server``: it joins
the inventory (what should be protected, on which schedule) with the vault (which points
exist, at what consistency) and the job queue (what is running). Pure apart from its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vmvault.model.point import RecoveryPoint

if TYPE_CHECKING:
    from vmvault.catalog.models import Job
    from vmvault.inventory import Inventory, Vm


def point_summary(
    point: RecoveryPoint, last_verified: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A recovery point as lists show it: when, what kind, how consistent, how big, and its
    last verify (``catalog.verifications.verified_doc``; None: never verified)."""
    disks = point["disks"]
    return {
        "id": point["id"],
        "vm": point["vm"],
        "created": point["created"],
        "completed": point.get("completed"),
        "type": point["type"],
        "parent": point.get("parent"),
        "consistency": point["consistency"]["level"],
        "consistency_reason": point["consistency"].get("reason", ""),
        "disks": [d["name"] for d in disks],
        "size": sum(d["size"] for d in disks),
        "changed": sum(d["stats"]["changed"] for d in disks),
        "stored": sum(d["stats"]["stored"] for d in disks),
        "last_verified": last_verified,
    }


def vm_status(
    vm: Vm,
    inventory: Inventory,
    points: list[RecoveryPoint],
    protection: str,
    active_jobs: list[Job],
    now: datetime,
) -> dict[str, Any]:
    """One VM's row of the fleet overview; ``points`` are its own, oldest first."""
    last = points[-1] if points else None
    timetable = inventory.timetable(vm)  # the policy's slots, moved to the VM's own start
    next_run = None
    if timetable is not None and protection == "protected":
        next_run = timetable.next_due(now).isoformat()
    protected = vm.protected_disks()
    return {
        "name": vm.name,
        "host": vm.host,
        "state": vm.state.value,
        "policy": vm.policy,
        "protection": protection,
        "points": len(points),
        "last_backup": last["completed"] if last else None,
        "last_point": last["id"] if last else None,
        "consistency": last["consistency"]["level"] if last else None,
        "next_run": next_run,
        "active_job": active_jobs[0].id if active_jobs else None,
        "active_job_state": active_jobs[0].state if active_jobs else None,  # queued, running
        "disks": [
            {
                "name": d.name,
                "role": d.role.value,
                "format": d.format.value if d.format else None,  # None: the header's
                "pool": d.pool,
                "protected": d in protected,
            }
            for d in vm.disks
        ],
    }


def fleet(
    inventory: Inventory,
    points: list[RecoveryPoint],
    protection: Mapping[str, str],
    jobs: list[Job],
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC)
    by_vm: dict[str, list[RecoveryPoint]] = {}
    for point in points:
        by_vm.setdefault(point["vm"], []).append(point)
    return [
        vm_status(
            vm,
            inventory,
            by_vm.get(vm.name, []),
            protection.get(vm.name, "protected"),
            [j for j in jobs if j.vm == vm.name and j.state in ("queued", "running")],
            now,
        )
        for vm in inventory.vms
    ]
