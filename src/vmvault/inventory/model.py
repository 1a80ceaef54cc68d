"""The inventory: storage pools, VMs and their disks, read from a TOML file.

Validated with pydantic; every error names the file, the field (as a dotted path, with the
VM's name where there is one) and what is wrong, in one line each. Example:

    [pools.ssd-a]
    egress_mb_per_s = 480
    requests_per_second = 20000

    [[vms]]
    name = "web01"
    state = "stopped"
    [[vms.disks]]
    name = "os"
    path = "/var/lib/vms/web01-os.img"
    role = "os"
    pool = "ssd-a"
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vmvault.alerts.settings import AlertSettings
from vmvault.backends.url import vault_scheme
from vmvault.errors import NotFound, UsageError
from vmvault.planning.cost import GB, PriceTable
from vmvault.policy import DEFAULT_POLICY, Policy, PolicyError, Timetable, start_delay
from vmvault.policy.model import as_hhmm
from vmvault.units import MIN_RATE  # the least rate a limit may name

DEFAULT_INVENTORY = "/etc/vmvault/inventory.toml"


class InventoryError(UsageError):
    code = "bad_inventory"


class VmNotFound(InventoryError, NotFound):
    code = "vm_not_found"


class DiskRole(StrEnum):
    OS = "os"
    DATA = "data"
    TEMPORARY = "temporary"  # the resource disk: never backed up


class DiskFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VHD = "vpc"
    VHDX = "vhdx"


class VmState(StrEnum):
    STOPPED = "stopped"
    RUNNING = "running"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoragePool(_Strict):
    """A storage account in the seed's terms: shared egress and request-rate budgets."""

    name: str = ""
    egress_mb_per_s: float = Field(default=500.0, ge=MIN_RATE)
    requests_per_second: float = Field(default=20000.0, ge=MIN_RATE)
    max_disks_in_flight: int = Field(default=20, ge=1)
    premium: bool = False
    # What the instant-restore snapshots of all the pool's VMs may hold beside their disks.
    instant_restore_max_gib: float | None = Field(default=None, gt=0)


class Disk(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str = Field(min_length=1)
    # None: the format the image's header says, probed at each backup; a declared one is
    # checked against the header unless ``force_format`` (a raw disk whose guest may write
    # what looks like an image header).
    format: DiskFormat | None = None
    force_format: bool = False
    role: DiskRole = DiskRole.DATA
    pool: str | None = None
    # The data on the disk (used, not provisioned) for planning before its first backup,
    # where the planner cannot see the disk (another host); the host's allocated bytes
    # otherwise.
    used_gb: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _forced_format_named(self) -> Disk:
        if self.force_format and self.format is None:
            raise ValueError('force_format needs the format to force (format = "raw")')
        return self


class BootSettings(_Strict):
    """How vmvault boots a point of this VM under QEMU (instant recovery, restore drills);
    every field has a default, so a VM without the table boots from its first disk."""

    memory_mb: int = Field(default=1024, ge=64, le=1 << 20)
    cpus: int = Field(default=1, ge=1, le=256)
    accel: Literal["auto", "kvm", "tcg"] = "auto"  # auto: KVM when /dev/kvm answers
    machine: str = Field(default="q35", pattern=r"^[A-Za-z0-9._-]+$")
    # Direct kernel boot (a guest whose kernel lives on the host), else the disk's firmware
    # boot (SeaBIOS).
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    # A user-mode NIC for an instant VM (never for a drill, which stays isolated).
    network: bool = False
    qemu_args: list[str] = Field(default_factory=list)  # appended as they are


class DrillSettings(_Strict):
    """A restore drill: the point just backed up booted in an isolated QEMU, and one sign
    of life waited for (exactly one of ``console``, ``guest_agent``, ``script``)."""

    after_backup: bool = True
    console: str | None = Field(default=None, min_length=1)  # text on the serial console
    guest_agent: bool = False  # the QEMU guest agent answers guest-ping
    script: str | None = None  # exits 0: its environment names the console log and QMP
    timeout: float = Field(default=300.0, gt=0, le=86400)  # seconds

    @model_validator(mode="after")
    def _one_signal(self) -> DrillSettings:
        if sum((self.console is not None, self.guest_agent, self.script is not None)) != 1:
            raise ValueError("a drill waits for exactly one of console, guest_agent, script")
        return self


class Vm(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    host: str = "localhost"
    state: VmState = VmState.STOPPED
    policy: str | None = None
    # This VM's own first start of the day (HH:MM in the policy's time zone), later than the
    # policy's: staggers VMs of one policy (see vmvault.policy.schedule.Timetable).
    start: str | None = None
    scripts: str | None = None  # path of a VMSnapshotScriptPluginConfig.json
    snapshot: str = "auto"  # provider: auto, in-place, reflink, copy, lvm, qemu-live
    instant_restore_max_gib: float | None = Field(default=None, gt=0)  # its snapshots' cap
    qmp: str | None = None  # QMP socket of a live QEMU VM: live snapshots, dirty bitmaps
    # Mount points to freeze while the snapshot is taken: the host's, frozen with fsfreeze;
    # or, with guest_agent set, the guest's (none: all of the guest's file systems).
    freeze: list[str] = Field(default_factory=list)
    guest_agent: str | None = None  # host end (unix socket) of a live guest's qemu-ga channel
    tags: dict[str, str] = Field(default_factory=dict)
    boot: BootSettings | None = None  # how a point is booted (instant restore, drills)
    drill: DrillSettings | None = None  # a restore drill after each backup
    disks: list[Disk] = Field(min_length=1)

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> Any:
        return None if value is None else as_hhmm(value)

    @model_validator(mode="after")
    def _disks_distinct(self) -> Vm:
        names = [d.name for d in self.disks]
        if len(set(names)) != len(names):
            raise ValueError(f"disk names repeat: {', '.join(sorted(names))}")
        if sum(d.role == DiskRole.OS for d in self.disks) > 1:
            raise ValueError("a VM has at most one os disk")
        return self

    @model_validator(mode="after")
    def _guest_mountpoints(self) -> Vm:
        # The guest agent matches paths against the guest's mount table as strings.
        relative = [p for p in self.freeze if not p.startswith("/")]
        if self.guest_agent and relative:
            raise ValueError(
                f"freeze: guest mount points must be absolute paths: {', '.join(relative)}"
            )
        return self

    def protected_disks(self) -> list[Disk]:
        return [d for d in self.disks if d.role != DiskRole.TEMPORARY]

    def excluded_disks(self) -> list[Disk]:
        return [d for d in self.disks if d.role == DiskRole.TEMPORARY]


class Limits(_Strict):
    """Fleet-wide limits; the seed's figures are the defaults."""

    disk_mb_per_s: float = Field(default=60.0, ge=MIN_RATE)  # "Target Throughput for Single Blob"
    max_vms: int = Field(default=40, ge=1)  # VMs backing up at once
    max_disks_per_pool: int = Field(default=20, ge=1)  # disks of one pool in flight


class Pricing(_Strict):
    """The cost report's price table (``[pricing]``); the defaults are Azure's list prices.

    Sizes are decimal GB, as Azure bills them. The storage rate depends on region and
    redundancy: set your own. ``enabled = false`` switches the cost model off (a
    self-hosted vault with no bill to compare against): no cost page, report or API.
    """

    enabled: bool = True
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    # At most an exabyte: more is a typo (inf, 1e308), and bytes must stay a finite number.
    small_limit_gb: float = Field(default=50, gt=0, le=1e9)  # up to this: one small instance
    small_price: Decimal = Field(default=Decimal("5"), ge=0)
    instance_unit_gb: float = Field(default=500, gt=0, le=1e9)  # above: per started unit
    instance_price: Decimal = Field(default=Decimal("10"), ge=0)
    storage_per_gb_month: Decimal = Field(default=Decimal("0.0224"), ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Pricing:
        self.table()  # the price table's own rules (tiers in order, small never dearer)
        return self

    def table(self, currency: str | None = None) -> PriceTable:
        return PriceTable(
            currency=currency or self.currency,
            small_limit_bytes=round(self.small_limit_gb * GB),
            small_price=self.small_price,
            instance_unit_bytes=round(self.instance_unit_gb * GB),
            instance_price=self.instance_price,
            storage_per_gb_month=self.storage_per_gb_month,
        )


class Replication(_Strict):
    """A copy of the vault that the scheduler keeps up to date (``vmvault vault replicate``),
    once a day in its window, after the backups queued before it have finished.

        [replication.offsite]
        to = "s3://backups-eu/vault-copy"
        start = "01:00"        # UTC: the window opens (default 00:00)
        window_hours = 6       # and closes this much later (default 24)
        policy = "long-term"   # the copy keeps every VM's points by this policy (default:
                               # each VM's own); it may keep longer than the vault
        passphrase_file = "/etc/vmvault/copy.key"  # the copy's own (default: the vault's)
    """

    name: str = ""
    to: str = Field(min_length=1)
    start: str = "00:00"
    window_hours: float = Field(default=24.0, gt=0, le=24)
    policy: str | None = None
    passphrase_file: str | None = None

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> str:
        return as_hhmm(value)

    @field_validator("to")
    @classmethod
    def _location(cls, value: str) -> str:
        try:
            vault_scheme(value)
        except UsageError as exc:
            raise ValueError(exc.message) from None
        return value

    def window_opened(self, now: datetime) -> datetime | None:
        """When the window ``now`` (UTC) falls in opened; None outside any window."""
        hour, minute = (int(x) for x in self.start.split(":"))
        for days_back in (0, 1):  # a window may run past midnight
            day = (now - timedelta(days=days_back)).date()
            opened = datetime.combine(day, clock_time(hour, minute), tzinfo=UTC)
            if opened <= now < opened + timedelta(hours=self.window_hours):
                return opened
        return None


class Reports(_Strict):
    """Reports written by the daily maintenance (``[reports]``):

        [reports]
        monthly_dir = "/var/lib/vmvault/reports"   # last month's report, CSV and PDF

    At the first maintenance of a month, last month's ``vmvault-YYYY-MM.csv`` and ``.pdf``
    are written there (once: files already there are left alone).
    """

    monthly_dir: str | None = None

    @field_validator("monthly_dir")
    @classmethod
    def _directory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or not value.isprintable():
            raise ValueError(f"{value!r} is not an absolute path")
        return value


class Inventory(_Strict):
    limits: Limits = Field(default_factory=Limits)
    pools: dict[str, StoragePool] = Field(default_factory=dict)
    policies: dict[str, Policy] = Field(default_factory=dict)
    vms: list[Vm] = Field(default_factory=list)
    replication: dict[str, Replication] = Field(default_factory=dict)
    alerts: AlertSettings = AlertSettings()
    pricing: Pricing = Pricing()
    reports: Reports = Reports()
    source: str = ""

    @field_validator("pools", "policies", "replication", mode="before")
    @classmethod
    def _name_tables(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({**v, "name": k} if isinstance(v, dict) else v) for k, v in value.items()}
        return value

    def disks_in_flight(self, pool: str) -> int:
        """How many disks of ``pool`` may be read at once: the pool's and the fleet's cap."""
        return min(self.pools[pool].max_disks_in_flight, self.limits.max_disks_per_pool)

    def policy(self, name: str) -> Policy:
        """A declared policy; ``default`` is Azure's default unless the inventory defines it."""
        if name in self.policies:
            return self.policies[name]
        if name == "default":
            return DEFAULT_POLICY
        raise InventoryError(f"no policy named {name!r} in {self.source}")

    def timetable(self, vm: Vm) -> Timetable | None:
        """When ``vm``'s backups start: its policy's schedule, delayed to its own ``start``;
        None without a policy. The scheduler and the planner both ask this."""
        if vm.policy is None:
            return None
        try:
            return Timetable.of(self.policy(vm.policy).schedule, vm.start)
        except PolicyError as exc:
            raise InventoryError(f"{self.source}: vms[{vm.name!r}].start: {exc}") from None

    @model_validator(mode="after")
    def _references(self) -> Inventory:
        names = [vm.name for vm in self.vms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"VM names repeat: {', '.join(duplicates)}")
        for copy in self.replication.values():
            if copy.policy not in (None, "default") and copy.policy not in self.policies:
                raise ValueError(
                    f"replication {copy.name}: unknown policy {copy.policy!r} "
                    f"(declared: {', '.join(sorted(self.policies)) or 'none'}; or 'default')"
                )
        for vm in self.vms:
            if vm.policy not in (None, "default") and vm.policy not in self.policies:
                raise ValueError(
                    f"VM {vm.name}: unknown policy {vm.policy!r} "
                    f"(declared: {', '.join(sorted(self.policies)) or 'none'}; or 'default')"
                )
            if vm.start is not None:
                if vm.policy is None:
                    raise ValueError(f"VM {vm.name}: start needs a policy to delay")
                schedule = self.policy(vm.policy).schedule
                try:
                    start_delay(schedule, vm.start)
                except PolicyError as exc:
                    raise ValueError(f"VM {vm.name}: {exc}") from None
            for disk in vm.disks:
                if disk.pool is not None and disk.pool not in self.pools:
                    raise ValueError(
                        f"VM {vm.name} disk {disk.name}: unknown pool {disk.pool!r} "
                        f"(declared: {', '.join(sorted(self.pools)) or 'none'})"
                    )
        return self

    def vm(self, name: str) -> Vm:
        for vm in self.vms:
            if vm.name == name:
                return vm
        known = ", ".join(v.name for v in self.vms) or "none"
        raise VmNotFound(f"no VM named {name!r} in {self.source} (known: {known})")
