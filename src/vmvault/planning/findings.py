"""The seed's best practices as named findings, each with the VMs or pools involved. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from vmvault.inventory import Inventory

MAX_VMS_AT_ONCE = 40
MAX_DISKS_PER_POOL_PER_SCHEDULE = 20
MAX_CLASSIC_PER_CLOUD_SERVICE = 10
MIN_APP_WRITE_KB = 8


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    subjects: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "subjects": list(self.subjects)}


def findings(
    inventory: Inventory,
    starts: Mapping[str, Sequence[datetime]],  # VM -> scheduled starts (aware) of the day
    *,
    peak_hours: tuple[int, int] = (8, 18),  # local hours [from, to) of the schedule's zone
) -> list[Finding]:
    """Every breach of the seed's best practices in this schedule, each naming who."""
    return [
        *_crowds(starts),
        *_pool_disks(inventory, starts),
        *_cloud_services(inventory, starts),
        *_per_vm(inventory, starts, peak_hours),
        *_premium(inventory),
    ]


def _crowds(starts: Mapping[str, Sequence[datetime]]) -> list[Finding]:
    by_time: dict[datetime, list[str]] = defaultdict(list)
    for name, times in starts.items():
        for t in times:
            by_time[t].append(name)
    return [
        Finding(
            "too_many_vms_at_once",
            f"{len(names)} VMs start at {t:%H:%M} UTC (at most {MAX_VMS_AT_ONCE}): stagger them",
            tuple(sorted(names)),
        )
        for t, names in sorted(by_time.items())
        if len(names) > MAX_VMS_AT_ONCE
    ]


def _pool_disks(inventory: Inventory, starts: Mapping[str, Sequence[datetime]]) -> list[Finding]:
    # Disks that start together, whatever policy (or VM's own start) put them there.
    disks: dict[tuple[datetime, str], list[str]] = defaultdict(list)
    for vm in inventory.vms:
        for t in starts.get(vm.name, ()):
            for d in vm.protected_disks():
                if d.pool:
                    disks[(t, d.pool)].append(f"{vm.name}/{d.name}")
    return [
        Finding(
            "too_many_disks_per_pool",
            f"{len(names)} disks of pool {pool} start at {t:%H:%M} UTC (at most "
            f"{MAX_DISKS_PER_POOL_PER_SCHEDULE}): stagger the VMs or spread them over several "
            "policies",
            tuple(names),
        )
        for (t, pool), names in sorted(disks.items())
        if len(names) > MAX_DISKS_PER_POOL_PER_SCHEDULE
    ]


def _cloud_services(
    inventory: Inventory, starts: Mapping[str, Sequence[datetime]]
) -> list[Finding]:
    groups: dict[tuple[str, datetime], list[str]] = defaultdict(list)
    for vm in inventory.vms:
        service = vm.tags.get("cloud_service")
        for t in starts.get(vm.name, ()):
            if service:
                groups[(service, t)].append(vm.name)
    return [
        Finding(
            "too_many_classic_vms",
            f"{len(names)} VMs of cloud service {service} start "
            f"at {t:%H:%M} UTC (at most {MAX_CLASSIC_PER_CLOUD_SERVICE}): stagger them by "
            "an hour",
            tuple(sorted(names)),
        )
        for (service, t), names in sorted(groups.items())
        if len(names) > MAX_CLASSIC_PER_CLOUD_SERVICE
    ]


def _per_vm(
    inventory: Inventory, starts: Mapping[str, Sequence[datetime]], peak_hours: tuple[int, int]
) -> list[Finding]:
    out = []
    low, high = peak_hours
    for vm in inventory.vms:
        if not vm.policy or vm.name not in starts:
            continue
        tz = inventory.policy(vm.policy).schedule.tzinfo
        peak = [t for t in starts[vm.name] if low <= t.astimezone(tz).hour < high]
        if peak:
            out.append(
                Finding(
                    "peak_hours",
                    f"{vm.name} is backed up at "
                    f"{peak[0].astimezone(tz):%H:%M} local, inside the peak hours "
                    f"{low:02d}-{high:02d}",
                    (vm.name,),
                )
            )
        write_kb = vm.tags.get("app_write_kb")
        if write_kb and float(write_kb) < MIN_APP_WRITE_KB:
            out.append(
                Finding(
                    "small_app_writes",
                    f"{vm.name}'s application writes "
                    f"{write_kb} KB at a time (under {MIN_APP_WRITE_KB} KB): its "
                    "backups will be slow",
                    (vm.name,),
                )
            )
    return out


def _premium(inventory: Inventory) -> list[Finding]:
    users: dict[str, set[str]] = defaultdict(set)
    for vm in inventory.vms:
        for d in vm.protected_disks():
            if d.pool and inventory.pools[d.pool].premium:
                users[d.pool].add(vm.name)
    return [
        Finding(
            "premium_pool_shared",
            f"premium pool {pool} holds disks of {len(names)} "
            "VMs: give each premium VM its own pool",
            tuple(sorted(names)),
        )
        for pool, names in sorted(users.items())
        if len(names) > 1
    ]
