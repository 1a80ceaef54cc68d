"""The Azure Backup cost model for VMs, as pure functions over plain data.

Azure bills a backed-up VM twice a month (seed, "Calculating the cost of protected
instances"; AZURE-FACTS.md, "Price"):

* a *protected instance* fee, priced from the VM's actual data (not the disks' maximum
  size), excluding the temporary "resource disk";
* *backup storage*, for the data actually held across its recovery points.

Units: sizes are bytes and ``GB`` is 10**9 bytes (decimal, as Azure's price sheet uses), so
"50 GB" is exactly 50_000_000_000 bytes. Money is :class:`decimal.Decimal` so sums of rows
equal totals exactly; costs are rounded to cents (half up) per row, and totals are the sums
of the rounded rows.

Nothing here reads a vault or a clock: callers gather the facts and pass them in, which
keeps the model testable and lets the CLI price "what if" scenarios.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, Literal, Protocol

from vmvault.errors import CostModelError
from vmvault.policy.protection import ProtectionStatus

GB: Final = 10**9
CENT: Final = Decimal("0.01")

DiskRole = Literal["os", "data", "temporary"]


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices for one currency; the defaults are Azure's list prices (USD per month).

    Protected instances: up to ``small_limit_bytes`` (50 GB) costs ``small_price`` (5);
    above that, each started ``instance_unit_bytes`` (500 GB) counts as one instance at
    ``instance_price`` (10), so 50 GB + 1 byte .. 500 GB is 10 and 501 GB is two instances,
    20.

    ``storage_per_gb_month`` (0.0224, about Azure's LRS rate) is an *assumption*: the real
    rate depends on region and redundancy (LRS/ZRS/GRS), so set it for your own vault.
    """

    currency: str = "USD"
    small_limit_bytes: int = 50 * GB
    small_price: Decimal = Decimal("5")
    instance_unit_bytes: int = 500 * GB
    instance_price: Decimal = Decimal("10")
    storage_per_gb_month: Decimal = Decimal("0.0224")

    def __post_init__(self) -> None:
        if not 0 < self.small_limit_bytes <= self.instance_unit_bytes:
            raise CostModelError("need 0 < small_limit_bytes <= instance_unit_bytes")
        if min(self.small_price, self.instance_price, self.storage_per_gb_month) < 0:
            raise CostModelError("prices cannot be negative")
        if self.small_price > self.instance_price:
            # Otherwise a bigger VM could be cheaper than a smaller one.
            raise CostModelError("small_price cannot exceed instance_price")


class Disk(Protocol):
    """What the model needs of a disk: its actual used bytes and its role."""

    @property
    def size_used(self) -> int: ...

    @property
    def role(self) -> str: ...


class Point(Protocol):
    """What the model needs of a recovery point: its VM and the bytes it newly stored."""

    @property
    def vm(self) -> str: ...

    @property
    def stored(self) -> Mapping[str, int]: ...


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """One disk: ``size_used`` is the actual data in bytes, not the disk's maximum size."""

    size_used: int
    role: DiskRole = "data"
    name: str = ""


@dataclass(frozen=True, slots=True)
class PointUsage:
    """One recovery point: per disk name, the bytes this point newly wrote to the vault."""

    vm: str
    stored: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VmUsage:
    """Everything the monthly bill needs to know about one VM.

    ``disks`` describe the VM as its last successful backup saw it: once protection is
    stopped, that backup's size stays the protected-instance size (seed), so callers pass
    the last backup's disks rather than the live VM's. ``first_success`` is when the first
    backup succeeded (None: never). ``points`` are the VM's recovery points still held.
    """

    vm: str
    disks: Sequence[Disk]
    points: Sequence[Point] = ()
    first_success: datetime | None = None
    status: ProtectionStatus = "protected"


def protected_instance_size(disks: Iterable[Disk]) -> int:
    """The protected-instance size in bytes: actual data on all but temporary disks.

    Azure prices the *actual* data, not the maximum disk size, and never backs up the
    resource (temporary) disk, so it does not count (seed: 17 + 30 + 0 GB = 47 GB).
    """
    total = 0
    for disk in disks:
        if disk.size_used < 0:
            raise CostModelError(f"a disk cannot use {disk.size_used} bytes")
        if disk.role not in ("os", "data", "temporary"):
            raise CostModelError(f"unknown disk role {disk.role!r}")
        if disk.role != "temporary":
            total += disk.size_used
    return total


def instance_count(size_bytes: int, table: PriceTable | None = None) -> int:
    """How many protected instances a VM of ``size_bytes`` counts as (at least one).

    A small VM (up to ``small_limit_bytes``) is one instance at the small price; above
    that each *started* ``instance_unit_bytes`` is one instance (501 GB -> 2).
    """
    table = table or PriceTable()
    if size_bytes < 0:
        raise CostModelError(f"a size cannot be {size_bytes} bytes")
    if size_bytes <= table.small_limit_bytes:
        return 1
    return -(-size_bytes // table.instance_unit_bytes)


def instance_price(size_bytes: int, table: PriceTable | None = None) -> Decimal:
    """The monthly protected-instance fee for a VM of ``size_bytes`` of actual data."""
    table = table or PriceTable()
    count = instance_count(size_bytes, table)
    if size_bytes <= table.small_limit_bytes:
        return table.small_price
    return table.instance_price * count


def storage_price(stored_bytes: int, table: PriceTable | None = None) -> Decimal:
    """The monthly storage fee for ``stored_bytes`` held in the vault, rounded to cents."""
    table = table or PriceTable()
    if stored_bytes < 0:
        raise CostModelError(f"stored bytes cannot be {stored_bytes}")
    cost = Decimal(stored_bytes) / Decimal(GB) * table.storage_per_gb_month
    return cost.quantize(CENT, rounding=ROUND_HALF_UP)


def money(amount: Decimal) -> str:
    """An amount as the report shows it: to the cent, always with both digits ("5.00", not
    "5" beside "0.00")."""
    return str(amount.quantize(CENT, rounding=ROUND_HALF_UP))


def storage_attribution(points: Iterable[Point]) -> dict[str, int]:
    """Bytes of vault storage attributed to each VM: the sum of what its points stored.

    Rule: new data is attributed to the VM whose backup wrote it. Data deduplicated against
    chunks another VM already wrote costs nothing more, and stays attributed to that first
    writer; so the attributions sum to the vault's real size, and nothing is billed twice.
    Callers therefore pass, per point and disk, only the *newly* stored bytes.
    """
    totals: dict[str, int] = {}
    for point in points:
        for disk, stored in point.stored.items():
            if stored < 0:
                raise CostModelError(f"{point.vm}/{disk}: stored bytes cannot be {stored}")
        totals[point.vm] = totals.get(point.vm, 0) + sum(point.stored.values())
    return totals


def billing_decision(
    first_success: datetime | bool | None, protection_status: ProtectionStatus, has_data: bool
) -> tuple[bool, str]:
    """Whether a VM is billed this month, and why (for the report's ``reason`` column).

    * Billing starts with the first successful backup: never backed up -> not billed.
    * It continues while any backup data is retained, also after "stop protection and
      retain data" (stopped-retain).
    * It stops once protection is stopped and the data deleted. Azure does not bill VM
      backup data while it is soft-deleted, so "stopped-deleted" is *not* billed even
      though the data still exists (and can be undeleted, which bills again); "purged" has
      no data left, so it is not billed either.
    """
    if not first_success:
        return False, "no successful backup yet"
    if protection_status == "purged":
        return False, "backup data purged"
    if protection_status == "stopped-deleted":
        return False, "soft-deleted (not billed)"
    if not has_data:
        return False, "no backup data retained"
    if protection_status == "stopped-retain":
        return True, "protection stopped, data retained"
    return True, "protected"


def billing_active(
    first_success: datetime | bool | None, protection_status: ProtectionStatus, has_data: bool
) -> bool:
    """True when the VM is billed this month; see :func:`billing_decision` for the rules."""
    return billing_decision(first_success, protection_status, has_data)[0]


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One VM's line of the monthly bill; unbilled VMs show their sizes but cost nothing."""

    vm: str
    protected_instance_bytes: int
    instances: int
    instance_cost: Decimal
    storage_bytes: int
    storage_cost: Decimal
    total: Decimal
    billed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict; money as strings so no precision is lost."""
        return {
            "vm": self.vm,
            "protected_instance_bytes": self.protected_instance_bytes,
            "instances": self.instances,
            "instance_cost": money(self.instance_cost),
            "storage_bytes": self.storage_bytes,
            "storage_cost": money(self.storage_cost),
            "total": money(self.total),
            "billed": self.billed,
            "reason": self.reason,
        }


CSV_FIELDS: Final = (
    "vm",
    "protected_instance_bytes",
    "instances",
    "instance_cost",
    "storage_bytes",
    "storage_cost",
    "total",
    "billed",
    "reason",
)


@dataclass(frozen=True, slots=True)
class Report:
    """A monthly bill: one row per VM (sorted by name) and totals that are their sums."""

    currency: str
    rows: tuple[ReportRow, ...]

    @property
    def instances(self) -> int:
        return sum(row.instances for row in self.rows)

    @property
    def instance_cost(self) -> Decimal:
        return sum((row.instance_cost for row in self.rows), Decimal(0))

    @property
    def storage_bytes(self) -> int:
        return sum(row.storage_bytes for row in self.rows)

    @property
    def storage_cost(self) -> Decimal:
        return sum((row.storage_cost for row in self.rows), Decimal(0))

    @property
    def total(self) -> Decimal:
        return sum((row.total for row in self.rows), Decimal(0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict with the rows and their totals."""
        return {
            "currency": self.currency,
            "rows": [row.to_dict() for row in self.rows],
            "totals": {
                "instances": self.instances,
                "instance_cost": money(self.instance_cost),
                "storage_bytes": self.storage_bytes,
                "storage_cost": money(self.storage_cost),
                "total": money(self.total),
            },
        }

    def to_csv(self) -> str:
        return rows_to_csv([row.to_dict() for row in self.rows])


def rows_to_csv(rows: Iterable[dict[str, Any]]) -> str:
    """CSV with a header and one line per VM (totals are left to the spreadsheet); takes
    the rows of ``Report.to_dict()``, so a report fetched from a server prints the same."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({field: row[field] for field in CSV_FIELDS})
    return out.getvalue()


def monthly_report(vms: Iterable[VmUsage], table: PriceTable | None = None) -> Report:
    """Price a month for ``vms``: protected-instance fee plus storage, per VM and in total.

    Storage is attributed over all VMs' points together (:func:`storage_attribution`), so a
    point listed under one VM but written by another is charged to its writer.
    """
    table = table or PriceTable()
    vm_list = list(vms)
    names = [usage.vm for usage in vm_list]
    if len(set(names)) != len(names):
        raise CostModelError("each VM may appear only once in a report")
    stored = storage_attribution(point for usage in vm_list for point in usage.points)
    rows = []
    for usage in sorted(vm_list, key=lambda u: u.vm):
        size = protected_instance_size(usage.disks)
        storage_bytes = stored.get(usage.vm, 0)
        billed, reason = billing_decision(
            usage.first_success, usage.status, has_data=bool(usage.points) or storage_bytes > 0
        )
        if billed:
            instances = instance_count(size, table)
            instance_cost = instance_price(size, table)
            storage_cost = storage_price(storage_bytes, table)
        else:
            instances, instance_cost, storage_cost = 0, Decimal(0), Decimal(0)
        rows.append(
            ReportRow(
                vm=usage.vm,
                protected_instance_bytes=size,
                instances=instances,
                instance_cost=instance_cost,
                storage_bytes=storage_bytes,
                storage_cost=storage_cost,
                total=instance_cost + storage_cost,
                billed=billed,
                reason=reason,
            )
        )
    return Report(currency=table.currency, rows=tuple(rows))
