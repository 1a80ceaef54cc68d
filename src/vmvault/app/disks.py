"""The disks a use case reads or writes: what to open, how, and within which budgets."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmvault.disks.qemu import FORMATS, QemuError, check_format, fuse_export, probe_image
from vmvault.disks.source import RawDisk
from vmvault.engine.backup import DiskInput
from vmvault.engine.budgets import DiskBudget, disk_budget
from vmvault.errors import FormatMismatch, ImageFormatRefused, UsageError

if TYPE_CHECKING:
    from vmvault.inventory import Disk as VmDisk
    from vmvault.inventory import Inventory


# How a point's disk got its format (its ``format_from``).
DETECTED = "detected"  # none was given: the image's header says it (qemu-img probes it)
DECLARED = "declared"  # given, and the header agrees or names no format
FORCED = "forced"  # given with force_format: the header is not looked at

# What qemu-img reports for a disk's own contents rather than an image container: no header
# it knows, or a LUKS header (a guest's encrypted disk, backed up as its bytes).
_PLAIN_CONTENTS = frozenset({"raw", "luks"})


@dataclass(frozen=True)
class DiskSpec:
    """A disk to back up: its name in the VM, where it is, its image format and role."""

    name: str
    path: str
    format: str | None = None  # None: the format the image's header says (``disk_format``)
    role: str = "data"
    origin: str | None = None  # the disk's own path when ``path`` is a snapshot of it
    read_format: str | None = None  # how to read ``path`` if not ``format`` (a QEMU snapshot)
    force_format: bool = False  # read as ``format`` whatever the image's header says
    declared_in: str | None = None  # the inventory entry declaring the disk, for errors
    budget: DiskBudget | None = None  # rate caps and the pool's disks-in-flight slot
    changed: list[tuple[int, int]] | None = None  # change hint from a dirty bitmap
    changes_only: bool = False  # ``path`` holds only the changed ranges


def open_disk(stack: ExitStack, spec: DiskSpec) -> DiskInput:
    """Open a disk for reading; non-raw images are read through a QEMU FUSE export."""
    path = spec.path
    fmt, settled = disk_format(spec)
    read_format = check_format(spec.read_format or fmt)
    if read_format != "raw":
        # A detected header may be a raw disk's data, written by its guest to make the
        # backup read a host file: the probe refuses a backing file, and the export opens
        # none either, should the header have changed since.
        follow = settled != DETECTED or spec.read_format is not None
        path = stack.enter_context(fuse_export(spec.path, read_format, backing=follow))
    source = stack.enter_context(RawDisk.open(path))
    source.path = spec.origin or spec.path  # the point names the disk, not an export or copy
    budget = spec.budget or DiskBudget()
    return DiskInput(
        spec.name,
        source,
        role=spec.role,
        format=fmt,
        format_from=settled,
        changed=spec.changed,
        changes_only=spec.changes_only,
        byte_buckets=budget.byte_buckets,
        request_buckets=budget.request_buckets,
        slot=budget.slot,
    )


def disk_format(spec: DiskSpec) -> tuple[str, str]:
    """The image format of ``spec``'s disk and how it was settled (``DETECTED``,
    ``DECLARED`` or ``FORCED``).

    Unless forced, the image's header is probed (``qemu-img info``): a declared format it
    contradicts is refused, and without one the header's format is taken if vmvault reads
    it and it needs no other file (a backing or data file is followed only when declared).
    A header that names no format leaves a declared one to QEMU, which refuses an image
    that is not in it (a fixed VHD has its footer at the end, where the probe does not look).
    """
    declared = None if spec.format is None else check_format(spec.format)
    if spec.force_format:
        if declared is None:
            raise UsageError(f"disk {spec.name}: force_format needs the format to force")
        return declared, FORCED
    # The disk itself: a QEMU live snapshot's image is QEMU's own, in the format QEMU chose.
    image = spec.origin if spec.read_format and spec.origin else spec.path
    shown = spec.origin or spec.path
    # RawDisk refuses a FIFO or a socket at once (qemu-img would wait on it for ever).
    with RawDisk.open(image) as opened:
        on_device = opened.is_block_device
    try:
        header = probe_image(image)
    except QemuError as exc:  # a header qemu-img cannot make out, or no qemu-img at all
        advice = _force_advice(spec, declared or "raw")
        raise type(exc)(_located(spec, f"{exc.message}; for a raw disk, {advice}")) from None
    found = header.format
    readable = found in FORMATS and not on_device  # QEMU images are read from files only
    if declared is not None:
        if found in _PLAIN_CONTENTS or found == declared:
            return declared, DECLARED
        if readable:
            fix = _advice(spec, f"give --format {found}", f'set format = "{found}"')
            fix += f" to read it as {found}, or "
        else:
            fix = f"vmvault does not read {found} images{' on devices' if on_device else ''}: "
        raise FormatMismatch(
            _located(
                spec,
                f"disk {shown} is a {found} image, not {declared} (qemu-img finds a {found} "
                f"header): {fix}{_force_advice(spec, declared)}",
            )
        )
    if found in _PLAIN_CONTENTS:
        return "raw", DETECTED
    if not readable:
        raise ImageFormatRefused(
            _located(
                spec,
                f"disk {shown} is a {found} image{' on a device' if on_device else ''}, "
                "which vmvault does not read: convert it to raw, qcow2, vpc or vhdx, or "
                f"{_force_advice(spec, 'raw')}",
            )
        )
    if header.backing_file or header.data_file:
        other = (
            f"a backing file ({header.backing_file})"
            if header.backing_file
            else f"an external data file ({header.data_file})"
        )
        declare = _advice(spec, f"give --format {found}", f'set format = "{found}"')
        raise ImageFormatRefused(
            _located(
                spec,
                f"disk {shown} is a {found} image with {other}, which vmvault reads only "
                f"when the format is declared: {declare} if that file is to be read",
            )
        )
    return found, DETECTED


def _advice(spec: DiskSpec, option: str, inventory_keys: str) -> str:
    """What to change, said the way the disk was given: on the command line, or in the
    inventory."""
    return inventory_keys if spec.declared_in else option


def _force_advice(spec: DiskSpec, fmt: str) -> str:
    if spec.format is not None:
        force = _advice(spec, "add --force-format", "set force_format = true")
    else:
        inventory_keys = f'set format = "{fmt}", force_format = true'
        force = _advice(spec, f"give --format {fmt} --force-format", inventory_keys)
    return f"{force} to read it as {fmt} all the same"


def _located(spec: DiskSpec, message: str) -> str:
    return f"{spec.declared_in}: {message}" if spec.declared_in else message


def inventory_budget(
    inventory: Inventory, disk: VmDisk, rate_limit: float | None = None
) -> DiskBudget:
    """The inventory's limits for one disk: its own cap (``rate_limit`` in bytes/s, if
    given, overrides the inventory's) and its pool's shared budgets."""
    disk_cap = rate_limit / 1e6 if rate_limit else inventory.limits.disk_mb_per_s
    return pool_budget(inventory, disk.pool, disk_cap)


def pool_budget(inventory: Inventory, pool_name: str | None, disk_cap: float) -> DiskBudget:
    """A disk's budget within ``pool_name``'s shared ones (egress, requests, disks in
    flight): backups and restores of the pool take their share of the same buckets."""
    if pool_name is None:
        return disk_budget(disk_cap)
    pool = inventory.pools[pool_name]
    return disk_budget(
        disk_cap,
        pool_name,
        egress_mb_per_s=pool.egress_mb_per_s,
        requests_per_second=pool.requests_per_second,
        disks_in_flight=inventory.disks_in_flight(pool_name),
    )
