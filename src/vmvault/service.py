"""The service layer: what a user asks for, as one call each, shared by the CLI and the API.

Opens the vault and the catalog, runs the engine, keeps the catalog and the job history
in step with the vault. No rendering here: results are plain dicts and dataclasses.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from getpass import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from vmvault.backends.base import Backend
from vmvault.backends.local import BackendReadOnly, LocalBackend
from vmvault.backends.retry import RetryingBackend
from vmvault.disks.qemu import check_format, fuse_export
from vmvault.disks.source import RawDisk
from vmvault.engine.backup import DiskInput, backup, parent_manifests
from vmvault.engine.check import CheckReport, check_vault
from vmvault.engine.gc import GcReport, collect_garbage
from vmvault.engine.progress import ProgressCallback, no_progress
from vmvault.engine.restore import RestoreReport, restore_disk, verify_point
from vmvault.engine.targets import restore_target
from vmvault.errors import (
    CorruptObject,
    DamageFound,
    ObjectMissing,
    PassphraseMissing,
    PointNotFound,
    UsageError,
    VmvaultError,
)
from vmvault.jobs.budgets import DiskBudget, disk_budget
from vmvault.vault.locks import VaultLock
from vmvault.vault.vault import Vault

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog
    from vmvault.inventory import Disk as VmDisk
    from vmvault.inventory import Inventory, Vm
    from vmvault.snapshot import SnapshotProvider
    from vmvault.snapshot.qemu_live import QemuLiveSnapshot

PASSPHRASE_ENV = "VMVAULT_PASSPHRASE"
READ_ONLY_KINDS = ("restore", "verify", "check")  # jobs that never write to the vault
log = logging.getLogger("vmvault")
PASSPHRASE_FILE_ENV = "VMVAULT_PASSPHRASE_FILE"


def resolve_passphrase(passphrase_file: str | None = None, *, confirm: bool = False) -> str:
    """From a key file, ``$VMVAULT_PASSPHRASE``, ``$VMVAULT_PASSPHRASE_FILE``, or a prompt."""
    path = passphrase_file or os.environ.get(PASSPHRASE_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise PassphraseMissing(f"cannot read passphrase file {path}: {exc.strerror}") from None
        if not text:
            raise PassphraseMissing(f"passphrase file {path} is empty")
        return text
    if env := os.environ.get(PASSPHRASE_ENV):
        return env
    if sys.stdin.isatty():
        first = getpass("Vault passphrase: ")
        if confirm and getpass("Repeat passphrase: ") != first:
            raise PassphraseMissing("the passphrases do not match")
        if not first:
            raise PassphraseMissing("an empty passphrase is not allowed")
        return first
    raise PassphraseMissing(
        f"no passphrase: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}, or use --passphrase-file"
    )


@dataclass
class Context:
    """Where things are: the vault's directory, the catalog's URL, how to get the passphrase."""

    vault_path: str
    catalog_url: str | None = None
    passphrase_file: str | None = None
    # The backend for ``vault_path`` (tests give a fault-injecting one); by default the
    # local directory behind the retry layer.
    backend_factory: Callable[[str], Backend] | None = field(
        default=None, repr=False, compare=False
    )
    # One catalog (engine and connection pool) per context, opened on first use.
    _catalog: Catalog | None = field(default=None, init=False, repr=False, compare=False)
    _catalog_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def backend(self) -> Backend:
        if self.backend_factory is not None:
            return self.backend_factory(self.vault_path)
        return RetryingBackend(LocalBackend(self.vault_path))

    def open_vault(self, *, load_index: bool = True) -> Vault:
        return Vault.open(
            self.backend(), resolve_passphrase(self.passphrase_file), load_index=load_index
        )

    @contextmanager
    def session(self, kind: str, pools: Sequence[str] = ()) -> Iterator[Vault]:
        """The vault with its index, held under a lock of ``kind`` for the whole block.

        Garbage collection sweeps nothing while such a lock lives; the lock is taken before
        the index is read, so the index shows every announced collection. ``pools`` are
        the storage pools the job reads, recorded (as keyed hashes) for restore warnings.
        """
        vault = self.open_vault(load_index=False)
        with ExitStack() as stack:
            try:
                stack.enter_context(
                    VaultLock(vault.backend, kind, tags=[pool_tag(vault, p) for p in pools])
                )
            except BackendReadOnly as exc:
                if kind not in READ_ONLY_KINDS:
                    raise
                # Nothing can be swept from a vault nobody can write: reading needs no lock.
                log.warning("warning: %s; reading without a lock", exc.message)
            vault.load_index()
            if kind in ("restore", "verify", "check"):
                # Packs no readable index object names still hold data a point may need.
                vault.adopt_orphan_packs(write=False)
            yield vault

    def catalog(self) -> Catalog:
        with self._catalog_lock:
            if self._catalog is None:
                from vmvault.catalog.store import Catalog  # SQLAlchemy: ~0.3 s to import

                self._catalog = Catalog(self.catalog_url)
            return self._catalog


def init_vault(ctx: Context, **options: Any) -> Vault:
    backend = ctx.backend()
    root = Path(ctx.vault_path).absolute()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not backend.exists("config"):
        raise UsageError(f"{root} is not empty and not a vault; choose an empty directory")
    return Vault.init(backend, resolve_passphrase(ctx.passphrase_file, confirm=True), **options)


class JobRecorder(Protocol):
    """Where a job's outcome goes: a row written at the end (CLI) or a queued job's row."""

    def catalog(self) -> Catalog: ...

    def finish(self, vault: Vault, vm: str | None, state: str, **fields: Any) -> None: ...


class _JobRecord:
    """A job's row in the catalog, written when the job ends.

    The catalog (SQLAlchemy) is opened on a background thread while the job runs, so a
    CLI backup does not wait ~0.3 s for imports; the row keeps the real start time.
    """

    def __init__(self, ctx: Context, kind: str) -> None:
        self.kind = kind
        self.started = datetime.now(UTC)
        self._catalog: Future[Catalog] = Future()
        threading.Thread(target=self._open, args=(ctx,), daemon=True).start()

    def _open(self, ctx: Context) -> None:
        try:
            self._catalog.set_result(ctx.catalog())
        except BaseException as exc:
            self._catalog.set_exception(exc)

    def catalog(self) -> Catalog:
        return self._catalog.result()

    def finish(self, vault: Vault, vm: str | None, state: str, **fields: Any) -> None:
        catalog = self.catalog()
        job_id = catalog.start_job(vault.config.vault_id, self.kind, vm, started=self.started)
        catalog.finish_job(job_id, state, **fields)


@contextmanager
def _job(ctx: Context, vault: Vault, kind: str, vm: str | None) -> Iterator[_JobRecord]:
    record = _JobRecord(ctx, kind)
    try:
        yield record
    except VmvaultError as exc:
        record.finish(vault, vm, "failed", error=(exc.code, exc.message))
        raise
    except BaseException as exc:  # a bug or an interrupt: recorded as failed too
        record.finish(vault, vm, "failed", error=("internal", f"{type(exc).__name__}: {exc}"))
        raise


@dataclass(frozen=True)
class DiskSpec:
    """A disk to back up: its name in the VM, where it is, its image format and role."""

    name: str
    path: str
    format: str = "raw"
    role: str = "data"
    origin: str | None = None  # the disk's own path when ``path`` is a snapshot of it
    read_format: str | None = None  # how to read ``path`` if not ``format`` (a QEMU snapshot)
    budget: DiskBudget | None = None  # rate caps and the pool's disks-in-flight slot
    changed: list[tuple[int, int]] | None = None  # change hint from a dirty bitmap
    changes_only: bool = False  # ``path`` holds only the changed ranges


def open_disk(stack: ExitStack, spec: DiskSpec) -> DiskInput:
    """Open a disk for reading; non-raw images are read through a QEMU FUSE export."""
    path = spec.path
    read_format = check_format(spec.read_format or spec.format)
    if read_format != "raw":
        path = stack.enter_context(fuse_export(spec.path, read_format))
    source = stack.enter_context(RawDisk.open(path))
    source.path = spec.origin or spec.path  # the point names the disk, not an export or copy
    budget = spec.budget or DiskBudget()
    return DiskInput(
        spec.name,
        source,
        role=spec.role,
        format=spec.format,
        changed=spec.changed,
        changes_only=spec.changes_only,
        byte_buckets=budget.byte_buckets,
        request_buckets=budget.request_buckets,
        slot=budget.slot,
    )


def run_backup(
    ctx: Context,
    vm: str,
    disks: Sequence[DiskSpec],
    *,
    full: bool = False,
    workers: int | None = None,
    rate_limit: float | None = None,
    progress: ProgressCallback = no_progress,
) -> dict[str, Any]:
    """Back up disk images of ``vm`` as they are into one point; returns the committed point.

    ``rate_limit`` (bytes/s) caps each disk, through the same budgets the inventory's
    limits use.
    """
    if rate_limit:
        disks = [replace(d, budget=disk_budget(rate_limit / 1e6)) for d in disks]
    with ctx.session("backup") as vault, _job(ctx, vault, "backup", vm) as job:
        return _backup_and_record(
            vault, job, vm, disks, full=full, workers=workers, progress=progress
        )


def _backup_and_record(
    vault: Vault,
    job: JobRecorder,
    vm: str,
    disks: Sequence[DiskSpec],
    **options: Any,
) -> dict[str, Any]:
    with ExitStack() as stack:
        inputs = [open_disk(stack, spec) for spec in disks]
        result = backup(vault, vm, inputs, **options)
    point = result.point
    job.catalog().record_point(vault.config.vault_id, point)
    lost = report_lost_packs(job.catalog(), vault)
    totals = {
        "bytes_read": sum(s.read for s in result.stats.values()),
        "bytes_changed": sum(s.changed for s in result.stats.values()),
        "bytes_sent": sum(s.new for s in result.stats.values()),
        "bytes_written": sum(s.stored for s in result.stats.values()),
    }
    job.finish(
        vault,
        vm,
        "succeeded",
        point_id=point["id"],
        counters=totals,
        details={
            "consistency": point["consistency"],
            **point.get("meta", {}),
            **({"missing_packs": lost} if lost else {}),
        },
    )
    return point


def run_vm_backup(
    ctx: Context,
    inventory: Inventory,
    vm_name: str,
    *,
    full: bool = False,
    workers: int | None = None,
    rate_limit: float | None = None,
    progress: ProgressCallback = no_progress,
    recorder: JobRecorder | None = None,
) -> dict[str, Any]:
    """Back up a VM of the inventory the way the seed describes it.

    Pre-script -> file-system freeze -> point-in-time snapshot of every non-temporary disk
    -> thaw -> post-script; then all disks are transferred in parallel from the snapshot,
    which is removed afterwards. The point records the consistency level reached and why,
    the excluded temporary disks, and the VM's configuration.
    """
    from vmvault.consistency import (
        Freezer,
        FsFreezer,
        GuestAgentFreezer,
        NoFreezer,
        load_script_config,
        quiesce,
    )
    from vmvault.inventory import VmState

    vm = inventory.vm(vm_name)
    disks = vm.protected_disks()
    running = vm.state == VmState.RUNNING
    scripts = load_script_config(vm.scripts) if vm.scripts and running else None
    freezer: Freezer = NoFreezer()
    if running and vm.guest_agent:
        freezer = GuestAgentFreezer(vm.guest_agent, vm.freeze)  # inside the guest
    elif running and vm.freeze:
        freezer = FsFreezer(vm.freeze)
    pools = sorted({d.pool for d in disks if d.pool})
    with (
        ctx.session("backup", pools) as vault,
        _job(ctx, vault, "backup", vm.name) if recorder is None else nullcontext(recorder) as job,
    ):
        provider = _snapshot_provider(vault, vm, disks, running, full)
        meta: dict[str, Any] = {"snapshot": provider.name}
        try:
            with quiesce(scripts, freezer, vm_running=running, single_disk=len(disks) == 1) as q:
                images = _snapshot_start(provider, [d.path for d in disks])
            specs = [
                replace(spec, budget=_budget(inventory, d, rate_limit))
                for spec, d in zip(
                    _snapshot_specs(provider, disks, images, meta), disks, strict=True
                )
            ]
            point = _backup_and_record(
                vault,
                job,
                vm.name,
                specs,
                full=full,
                workers=workers,
                progress=progress,
                consistency=q.consistency.to_dict(),
                excluded=[
                    {
                        "name": d.name,
                        "role": d.role.value,
                        "path": d.path,
                        "reason": "temporary disk: never backed up",
                    }
                    for d in vm.excluded_disks()
                ],
                vm_config=vm.model_dump(mode="json"),
                meta={**meta, "quiesce": q.to_dict()},
            )
            if live := _live(provider):
                live.commit()  # only now may the parent's dirty bitmap go
            elif provider.name in ("reflink", "copy") and _keeps_snapshots(inventory, vm):
                from vmvault.snapshot import instant

                instant.keep(point, {d.name: d.path for d in disks}, images)
            return point
        finally:
            provider.release()


def pool_tag(vault: Vault, pool: str) -> str:
    """A pool's name as lock objects carry it: a keyed hash, so locks leak no names."""
    return vault.keys.chunk_id(b"pool:" + pool.encode()).hex()[:16]


def pools_being_backed_up(vault: Vault, pools: Sequence[str]) -> list[str]:
    """Those of ``pools`` that a running backup is reading right now."""
    from vmvault.vault.locks import live_locks

    busy = {t for lock in live_locks(vault.backend) if lock.kind == "backup" for t in lock.tags}
    return [p for p in pools if pool_tag(vault, p) in busy]


def _snapshot_provider(
    vault: Vault, vm: Vm, disks: Sequence[VmDisk], running: bool, full: bool
) -> SnapshotProvider:
    """The inventory's choice; ``auto`` takes QEMU's live snapshot when a QMP socket is set."""
    from vmvault.snapshot import choose_provider
    from vmvault.snapshot.qemu_live import QemuLiveSnapshot  # asyncio: imported when needed

    if vm.snapshot == "qemu-live" or (vm.snapshot == "auto" and running and vm.qmp):
        if not vm.qmp:
            raise UsageError(f'VM {vm.name}: snapshot = "qemu-live" needs qmp = "SOCKET"')
        return QemuLiveSnapshot(
            vm.qmp,
            bitmap_name=f"vmvault-{vault.config.vault_id[:8]}",
            parent_generation=None if full else _bitmap_generation(vault, vm.name, disks),
        )
    return choose_provider(vm.snapshot, running, [d.path for d in disks])


def _bitmap_generation(vault: Vault, vm: str, disks: Sequence[VmDisk]) -> str | None:
    """The dirty-bitmap generation of the VM's newest point, if every disk's parent is it.

    A bitmap records writes since one point; using it against another parent would miss
    writes, so anything else means no generation, and the provider reads disks in full.
    """
    ids = [i for i in reversed(vault.point_ids())]
    for point_id in ids:
        newest = readable_point(vault, point_id)
        if newest is None or newest.get("vm") != vm:
            continue
        generation = newest.get("meta", {}).get("qemu_generation")
        parents = parent_manifests(vault, vm, [d.name for d in disks])
        if generation and all(d.name in parents and parents[d.name][0] == point_id for d in disks):
            return str(generation)
        return None
    return None


def _live(provider: SnapshotProvider) -> QemuLiveSnapshot | None:
    """The provider as a live QEMU snapshot (two phases, change hints), or None."""
    return cast("QemuLiveSnapshot", provider) if provider.name == "qemu-live" else None


def _snapshot_start(provider: SnapshotProvider, paths: list[str]) -> list[str]:
    """While quiesced: only the instant part (QEMU copies after the thaw)."""
    live = _live(provider)
    return live.start(paths) if live else provider.take(paths)


def _budget(inventory: Inventory, disk: VmDisk, rate_limit: float | None = None) -> DiskBudget:
    """The inventory's limits for one disk: its own cap (``rate_limit`` in bytes/s, if
    given, overrides the inventory's) and its pool's shared budgets."""
    disk_cap = rate_limit / 1e6 if rate_limit else inventory.limits.disk_mb_per_s
    if disk.pool is None:
        return disk_budget(disk_cap)
    pool = inventory.pools[disk.pool]
    return disk_budget(
        disk_cap,
        disk.pool,
        egress_mb_per_s=pool.egress_mb_per_s,
        requests_per_second=pool.requests_per_second,
        disks_in_flight=inventory.disks_in_flight(disk.pool),
    )


def _snapshot_specs(
    provider: SnapshotProvider, disks: Sequence[VmDisk], images: list[str], meta: dict[str, Any]
) -> list[DiskSpec]:
    live = _live(provider)
    if live is None:
        return [
            DiskSpec(d.name, image, d.format.value, d.role.value, origin=d.path)
            for d, image in zip(disks, images, strict=True)
        ]
    live.wait()
    meta["qemu_generation"] = live.generation()
    meta["qemu_notes"] = dict(zip([d.name for d in disks], live.notes(), strict=True))
    return [
        DiskSpec(
            d.name,
            image,
            d.format.value,
            d.role.value,
            origin=d.path,
            read_format=fmt,
            changed=changed,
            changes_only=changed is not None,
        )
        for d, image, fmt, changed in zip(
            disks, images, live.formats(), live.changed(), strict=True
        )
    ]


def readable_point(vault: Vault, point_id: str) -> dict[str, Any] | None:
    """The point, or None when its object is damaged or gone (it costs that point only)."""
    try:
        return vault.get_point(point_id)
    except (CorruptObject, ObjectMissing, PointNotFound):
        return None


@dataclass
class PointListing:
    """The readable points of a vault (oldest first) and the damaged ones, with why."""

    points: list[dict[str, Any]]
    damaged: dict[str, str]

    def damaged_docs(self) -> list[dict[str, str]]:
        return [{"id": pid, "error": message} for pid, message in sorted(self.damaged.items())]


def read_points(vault: Vault) -> PointListing:
    points, damaged = vault.read_points()
    return PointListing(points, {pid: exc.message for pid, exc in damaged.items()})


def list_points(ctx: Context, vm: str | None = None) -> PointListing:
    """Points from the vault itself (the catalog may lag a vault copied from elsewhere).

    Damaged point objects are listed apart (their VM is unknown) and raise an alert."""
    vault = ctx.open_vault(load_index=False)
    listing = read_points(vault)
    report_damaged_points(ctx.catalog(), vault, listing.damaged)
    return PointListing([p for p in listing.points if vm is None or p["vm"] == vm], listing.damaged)


def report_damaged_points(catalog: Catalog, vault: Vault, damaged: dict[str, str]) -> None:
    """One ``point_damaged`` alert per damaged point object (raised once)."""
    from vmvault.alerts.store import raise_alert as store

    for point_id, message in damaged.items():
        store(
            catalog,
            vault.config.vault_id,
            "point_damaged",
            f"recovery point {point_id} is damaged: {message}",
            details={"point": point_id, "error": message},
            dedupe_key=f"point_damaged:{point_id}",
        )


def report_lost_packs(catalog: Catalog, vault: Vault) -> list[str]:
    """A ``vault_damaged`` alert for packs the index names but the backend lacks."""
    from vmvault.alerts.store import raise_alert as store
    from vmvault.vault.packs import pack_key

    lost = [pack_key(p) for p in vault.index.missing_packs()]
    if lost:
        store(
            catalog,
            vault.config.vault_id,
            "vault_damaged",
            f"{len(lost)} pack(s) of the vault are missing or damaged; backups store "
            "their chunks again, older points that used them are damaged (run `vmvault "
            "check`)",
            details={"missing_packs": lost},
            dedupe_key="packs_missing:" + ",".join(sorted(lost)),
        )
    return lost


def resolve_point(vault: Vault, ref: str, vm: str | None = None) -> str:
    """A point id, a unique prefix of one, or ``latest`` (of ``vm`` if given; a damaged
    point is nobody's latest)."""
    ids = vault.point_ids()
    if ref == "latest":
        candidates = ids
        if vm is not None:
            candidates = [
                i for i in ids if (p := readable_point(vault, i)) is not None and p["vm"] == vm
            ]
        if not candidates:
            raise UsageError("the vault has no recovery points" + (f" for {vm}" if vm else ""))
        return candidates[-1]
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise PointNotFound(f"no recovery point {ref!r} in this vault")
    raise UsageError(f"{ref!r} names {len(matches)} points; give more of the id")


def run_restore(
    ctx: Context,
    point_ref: str,
    target: str,
    *,
    disk: str | None = None,
    vm: str | None = None,
    target_format: str = "raw",
    ignore_errors: bool = False,
    workers: int | None = None,
    sync: bool = False,
    force: bool = False,
    new_file: bool = False,
    budget: DiskBudget | None = None,
    progress: ProgressCallback = no_progress,
    record: bool = True,
) -> RestoreReport:
    """Restore one disk of a point; ``budget`` makes it take its share of a pool's budget.

    ``record=False`` leaves the job history to the caller (a VM restore is one job).
    ``new_file``: vmvault chose the target's name, so even a device found there is refused
    (see ``targets.restore_target``).

    A point whose snapshot is still kept for instant restore is copied from it (and checked
    against the point's chunk ids) instead of being read from the vault.
    """
    with ctx.session("restore") as vault:
        point_id = resolve_point(vault, point_ref, vm)
        point = vault.get_point(point_id)
        vm_name = point["vm"]
        if target_format == "raw" and not ignore_errors:
            report = _instant_restore(
                vault, point, disk, Path(target), force=force, new_file=new_file
            )
            if report is not None:
                return report
        options: dict[str, Any] = {
            "disk": disk,
            "target_format": target_format,
            "ignore_errors": ignore_errors,
            "workers": workers,
            "sync": sync,
            "force": force,
            "new_file": new_file,
            "byte_buckets": budget.byte_buckets if budget else (),
            "progress": progress,
        }
        if not record:
            return restore_disk(vault, point_id, target, **options)
        return _restore_recorded(ctx, vault, point_id, vm_name, target, **options)


def _keeps_snapshots(inventory: Inventory, vm: Vm) -> bool:
    """Whether the VM's policy keeps instant-restore snapshots."""
    return bool(vm.policy and inventory.policy(vm.policy).retention.instant_restore_days)


def _instant_restore(
    vault: Vault,
    point: dict[str, Any],
    disk: str | None,
    target: Path,
    *,
    force: bool,
    new_file: bool,
) -> RestoreReport | None:
    from vmvault.engine.restore import point_disk
    from vmvault.snapshot import instant
    from vmvault.snapshot.base import SnapshotError
    from vmvault.snapshot.providers import sparse_copy

    entry = point_disk(vault, point, disk)
    image = instant.find(point, entry["name"])
    if image is None or entry.get("format", "raw") != "raw":
        return None
    started = time.perf_counter()
    manifest = vault.get_manifest(entry["manifest"])
    with restore_target(target, force=force, new_file=new_file) as prepared:
        if prepared.is_device:
            prepared.abandon()
            return None  # a device gets its explicit zeros from the vault's restore
        copy = Path(prepared.path)
        try:
            sparse_copy(image, copy)
        except SnapshotError:
            # The kept copy cannot be read, or the target cannot take it (full): the vault's
            # restore decides, and names a failure of the target as such (target_error).
            prepared.abandon()
            return None
        if not instant.matches(vault, manifest, copy):
            prepared.abandon()
            return None  # the kept copy changed: the vault decides
    return RestoreReport(
        entry["name"],
        manifest.size,
        bytes_verified=manifest.size,
        bytes_written=manifest.size,
        seconds=time.perf_counter() - started,
        source="instant",
    )


def _restore_recorded(
    ctx: Context, vault: Vault, point_id: str, vm_name: str, target: str, **options: Any
) -> RestoreReport:
    with _job(ctx, vault, "restore", vm_name) as job:
        report = restore_disk(vault, point_id, target, **options)
        state = "partially_succeeded" if report.damaged else "succeeded"
        job.finish(
            vault,
            vm_name,
            state,
            point_id=point_id,
            counters={"bytes_written": report.bytes_written},
            details=report.to_dict(),
        )
    return report


def run_verify(
    ctx: Context, point_ref: str, *, vm: str | None = None, progress: ProgressCallback = no_progress
) -> tuple[str, list[RestoreReport]]:
    with ctx.session("verify") as vault:
        point_id = resolve_point(vault, point_ref, vm)
        try:
            vault.get_point(point_id)
        except (CorruptObject, ObjectMissing) as exc:
            report_damaged_points(ctx.catalog(), vault, {point_id: exc.message})
            raise DamageFound(f"recovery point {point_id} is damaged: {exc.message}") from None
        try:
            return point_id, verify_point(vault, point_id, progress=progress)
        except (CorruptObject, ObjectMissing) as exc:  # a manifest: the whole disk is lost
            raise DamageFound(f"recovery point {point_id} is damaged: {exc.message}") from None


def run_check(ctx: Context, *, read_data: bool = False) -> CheckReport:
    """Check the whole vault; damaged points and lost packs also raise their alerts."""
    with ctx.session("check") as vault:
        report = check_vault(vault, read_data=read_data)
        damaged = {p.object: p.message for p in report.problems if p.kind == "point_unreadable"}
        catalog = ctx.catalog()
        _check_catalog(catalog, vault, report)
        report_damaged_points(catalog, vault, damaged)
        report_lost_packs(catalog, vault)
        return report


def _check_catalog(catalog: Catalog, vault: Vault, report: CheckReport) -> None:
    """Points the catalog recorded that the vault no longer has: deleted behind vmvault's
    back (vmvault's own deletions update the catalog)."""
    from vmvault.engine.check import Problem

    rows = catalog.points(vault.config.vault_id)  # before the vault's listing: a point is
    present = set(vault.point_ids())  # committed to the vault before it is recorded
    gone = {row.id for row in rows} - present
    if gone:  # still recorded? A deletion updates the vault first, then the catalog
        gone &= {row.id for row in catalog.points(vault.config.vault_id)}
    for row in rows:
        if row.id in gone:
            report.problems.append(
                Problem(
                    "error",
                    "point_missing",
                    row.id,
                    f"recovery point of {row.vm} is recorded but missing from the vault "
                    "(if it was deleted on purpose, `vmvault vault reindex` forgets it)",
                )
            )


def run_gc(ctx: Context, **options: Any) -> GcReport:
    """Collect garbage (see engine/gc.py); takes no lock: it looks for them.

    ``force=True`` collects even when a point or block record is damaged: what only the
    damaged objects used is then freed too."""
    return collect_garbage(ctx.open_vault(), **options)


def raise_alert(ctx: Context, vault: Vault, kind: str, message: str, **fields: Any) -> int | None:
    """Record an alert in the catalog; the server or scheduler delivers it."""
    from vmvault.alerts.store import raise_alert as store

    return store(ctx.catalog(), vault.config.vault_id, kind, message, **fields)


def forget_point(ctx: Context, point_ref: str) -> str:
    """Delete a recovery point; its data goes at the next garbage collection."""
    from vmvault.protection import check_may_delete

    vault = ctx.open_vault(load_index=False)
    point_id = resolve_point(vault, point_ref)
    check_may_delete(vault)
    point = readable_point(vault, point_id)
    vm = point["vm"] if point is not None else None  # a damaged point can be forgotten too
    ctx.catalog().forget_points(vault.config.vault_id, [point_id])  # first: see run_prune
    vault.delete_point(point_id)
    raise_alert(
        ctx,
        vault,
        "backup_data_deleted",
        f"recovery point {point_id} of {vm or 'an unknown VM (damaged)'} was deleted",
        vm=vm,
        details={"point": point_id},
    )
    return point_id


def reindex(ctx: Context) -> dict[str, Any]:
    """Rebuild the chunk index from the packs' own headers, and the catalog from the points."""
    vault = ctx.open_vault(load_index=False)
    packs, unreadable = vault.rebuild_index()
    listing = read_points(vault)
    count = ctx.catalog().rebuild(vault.config.vault_id, listing.points)
    report_damaged_points(ctx.catalog(), vault, listing.damaged)
    return {
        "packs": packs,
        "chunks": len(vault.index),
        "unreadable_packs": unreadable,
        "points": count,
        "damaged_points": sorted(listing.damaged),
    }


_EXTENSIONS = {"raw": "img", "qcow2": "qcow2", "vpc": "vhd", "vhdx": "vhdx"}


def run_vm_restore(
    ctx: Context,
    inventory: Inventory,
    vm_name: str,
    *,
    point_ref: str = "latest",
    new_name: str | None = None,
    directory: str | None = None,
    target_pool: str | None = None,
    in_place: bool = False,
    confirmed: bool = False,
    force: bool = False,
    confine_to: str | None = None,
    progress: ProgressCallback = no_progress,
    recorder: JobRecorder | None = None,
) -> dict[str, Any]:
    """Restore every disk of a VM's recovery point, with its configuration: one job.

    ``force`` replaces files of the same names; ``confine_to`` (the server's restore
    root) makes ``directory`` a new folder directly inside it, made at write time.

    As a new VM (``new_name`` in ``directory``): disks in their original formats under new
    names, and an inventory entry for the new VM written beside them. In place: only for a
    stopped VM and when ``confirmed``; the current disks are backed up first (as Azure
    snapshots them before replacing), then each disk is restored to a temporary file and
    renamed over the original, so a failed restore leaves the original disk as it was (a
    disk on a block device, or a symlink to one such as /dev/vg/lv, is written in place).
    """
    vm = inventory.vm(vm_name)
    vault = ctx.open_vault(load_index=False)
    with _job(ctx, vault, "restore", vm.name) if recorder is None else nullcontext(recorder) as job:
        result = _vm_restore(
            ctx,
            inventory,
            vault,
            vm,
            point_ref=point_ref,
            new_name=new_name,
            directory=directory,
            target_pool=target_pool,
            in_place=in_place,
            confirmed=confirmed,
            force=force,
            confine_to=confine_to,
            progress=progress,
        )
        job.finish(
            vault,
            vm.name,
            "succeeded",
            point_id=result["point"],
            counters={"bytes_written": sum(d["bytes_written"] for d in result["disks"])},
            details=result,
        )
    return result


def _vm_restore(
    ctx: Context,
    inventory: Inventory,
    vault: Vault,
    vm: Vm,
    *,
    point_ref: str,
    new_name: str | None,
    directory: str | None,
    target_pool: str | None,
    in_place: bool,
    confirmed: bool,
    force: bool,
    confine_to: str | None,
    progress: ProgressCallback,
) -> dict[str, Any]:
    from vmvault.inventory import VmState

    point_id = resolve_point(vault, point_ref, vm.name)
    point = vault.get_point(point_id)
    if point["vm"] != vm.name:
        raise UsageError(f"point {point_id} belongs to {point['vm']}, not {vm.name}")
    result: dict[str, Any] = {"point": point_id, "vm": vm.name, "disks": [], "warnings": []}
    targets = sorted({d.pool for d in vm.disks if d.pool}) if in_place else [target_pool or ""]
    for pool in pools_being_backed_up(vault, [p for p in targets if p]):
        # The seed's best practice: a restore onto a pool that is being backed up takes
        # its IOPS from the backup (and the backup's from the restore).
        result["warnings"].append(
            f"pool {pool} is being backed up right now: the restore and the backup will "
            "slow each other down; restore to another pool or later"
        )
    if in_place:
        if vm.state != VmState.STOPPED:
            raise UsageError(f"{vm.name} is {vm.state.value}: stop it before restoring in place")
        if not confirmed:
            raise UsageError(f"restoring {vm.name} in place replaces its disks: add --yes")
        safety = run_vm_backup(ctx, inventory, vm.name, progress=progress)
        result["safety_point"] = safety["id"]
        paths = {d.name: Path(d.path) for d in vm.disks}
        vm_disks = {d.name: d for d in vm.disks}
        for disk in point["disks"]:
            final = paths.get(disk["name"])
            if final is None:
                raise UsageError(f"{vm.name} has no disk {disk['name']!r} any more")
            # A file disk is restored under a temporary name and renamed over the original
            # only when whole (``restore_target`` with force); a device is written in place
            # (a temporary file beside /dev/vg/lv would replace the link, not the volume).
            report = run_restore(
                ctx,
                point_id,
                str(final),
                disk=disk["name"],
                target_format=disk.get("format", "raw"),
                sync=True,
                force=True,
                budget=_budget(inventory, vm_disks[disk["name"]]),
                progress=progress,
                record=False,
            )
            result["disks"].append(
                {
                    "name": disk["name"],
                    "path": str(final),
                    "bytes_verified": report.bytes_verified,
                    "bytes_written": report.bytes_written,
                }
            )
        return result
    if not new_name or not directory:
        raise UsageError("give --as NEW_NAME and --to DIR, or --in-place")
    import contextlib

    from vmvault.engine.targets import new_files_folder, target_failure
    from vmvault.inventory import check_new_vm_name

    check_new_vm_name(new_name)
    target_dir = Path(directory).absolute()
    budget = None
    if target_pool:
        if target_pool not in inventory.pools:
            raise UsageError(f"no pool named {target_pool!r} in {inventory.source}")
        pool_conf = inventory.pools[target_pool]
        budget = disk_budget(  # restores take their share of the pool, as backups do
            inventory.limits.disk_mb_per_s,
            target_pool,
            egress_mb_per_s=pool_conf.egress_mb_per_s,
            requests_per_second=pool_conf.requests_per_second,
            disks_in_flight=inventory.disks_in_flight(target_pool),
        )
    config = dict(point.get("vm_config") or {"name": vm.name, "disks": []})
    new_disks = []
    confined = Path(confine_to) if confine_to else None
    created: list[Path] = []  # files this restore added, removed again if it fails
    with new_files_folder(target_dir, confine_to=confined) as folder:
        try:
            for disk in point["disks"]:
                fmt = disk.get("format", "raw")
                name = f"{new_name}-{disk['name']}.{_EXTENSIONS.get(fmt, 'img')}"
                path = target_dir / name
                existed = os.path.lexists(folder / name)
                report = run_restore(
                    ctx,
                    point_id,
                    str(folder / name),  # through the folder's descriptor
                    disk=disk["name"],
                    target_format=fmt,
                    force=force,
                    new_file=True,
                    budget=budget,
                    progress=progress,
                    record=False,
                )
                if not existed:
                    created.append(folder / name)
                result["disks"].append(
                    {
                        "name": disk["name"],
                        "path": str(path),
                        "format": fmt,
                        "bytes_verified": report.bytes_verified,
                        "bytes_written": report.bytes_written,
                    }
                )
                old: dict[str, Any] = next(
                    (d for d in config.get("disks", []) if d.get("name") == disk["name"]), {}
                )
                new_disks.append(
                    {
                        **old,
                        "name": disk["name"],
                        "path": str(path),
                        "format": fmt,
                        "role": disk.get("role", old.get("role", "data")),
                    }
                )
            entry = {**config, "name": new_name, "state": "stopped", "disks": new_disks}
            toml = folder / f"{new_name}.toml"
            try:
                with restore_target(toml, force=force, new_file=True) as prepared:
                    Path(prepared.path).write_text(_vm_toml(entry))
            except OSError as exc:
                raise target_failure(target_dir / toml.name, exc) from None
        except BaseException:
            # Half a VM is of no use and would stand in the way of the next attempt: the
            # files this restore added go (those --force replaced are whole and stay).
            for added in created:
                with contextlib.suppress(OSError):  # gone already: nothing more to do
                    os.unlink(added)
            raise
    result.update(new_vm=new_name, inventory=str(target_dir / f"{new_name}.toml"))
    return result


def _vm_toml(vm: dict[str, Any]) -> str:
    """One ``[[vms]]`` entry in TOML, ready to paste into the inventory."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        import json

        return json.dumps(str(v))

    lines = ["[[vms]]"]
    lines += [f"{k} = {value(v)}" for k, v in vm.items() if k != "disks" and v is not None]
    for disk in vm.get("disks", []):
        lines += ["", "  [[vms.disks]]"]
        lines += [f"  {k} = {value(v)}" for k, v in disk.items() if v is not None]
    return "\n".join(lines) + "\n"


def run_prune(
    ctx: Context,
    inventory: Inventory,
    *,
    vm_name: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Apply each VM's retention policy: delete the points it no longer keeps.

    VMs without a policy are left alone. The data of deleted points is freed by the next
    garbage collection.
    """
    from vmvault.policy import Point, prune_plan
    from vmvault.protection import (
        RetentionShortenedError,
        accept_retentions,
        settings,
        state_of,
    )

    now = now or datetime.now(UTC)
    vault = ctx.open_vault(load_index=False)
    immutable = settings(vault)["immutability"]
    points = vault.points()
    policies = {
        vm.name: inventory.policy(vm.policy)
        for vm in ([inventory.vm(vm_name)] if vm_name else inventory.vms)
        if vm.policy is not None  # VMs without a policy are left alone
    }
    try:  # every VM's retention is accepted before anything is deleted
        shortened_by_vm = accept_retentions(vault, inventory, vm_name=vm_name, record=not dry_run)
    except RetentionShortenedError as exc:
        for refused_vm, (policy_name, fields) in [] if dry_run else exc.refused.items():
            raise_alert(
                ctx,
                vault,
                "retention_shortened",
                f"prune refused to keep {refused_vm}'s points for less ({policy_name}): "
                f"{', '.join(fields)}; the vault is immutable ({immutable})",
                vm=refused_vm,
                details={"policy": policy_name, "shortened": fields, "refused": True},
            )
        raise
    result: dict[str, Any] = {"dry_run": dry_run, "vms": {}}
    catalog = ctx.catalog()
    for name, policy in policies.items():
        vm = inventory.vm(name)
        shortened = shortened_by_vm.get(vm.name, [])
        mine = [
            Point(p["id"], datetime.fromisoformat(p["created"]), vm.name)
            for p in points
            if p["vm"] == vm.name
        ]
        # "stop protection, retain data" (and soft-deleted data) is never pruned.
        stopped = state_of(vault, vm.name).status != "protected"
        plan = prune_plan(
            mine,
            policy.retention,
            now,
            policy.schedule.timezone,
            stopped_retain=stopped,
            immutable=immutable,
        )
        if not dry_run:
            for point_id in plan.prune:
                # The catalog's row goes first, without listing the vault again (the store
                # may be failing): a catalog that lags the vault is rebuilt by reindex, but
                # a point vmvault deleted must never look deleted behind its back.
                catalog.forget_points(vault.config.vault_id, [point_id])
                try:
                    vault.delete_point(point_id)
                except BaseException:
                    with suppress(VmvaultError):  # still there after all: it keeps its row
                        catalog.record_point(vault.config.vault_id, vault.get_point(point_id))
                    raise
        if shortened and not dry_run:
            raise_alert(
                ctx,
                vault,
                "retention_shortened",
                f"{vm.name}'s points are now kept for less ({policy.name}): {', '.join(shortened)}",
                vm=vm.name,
                details={"policy": policy.name, "shortened": shortened},
            )
        result["vms"][vm.name] = {
            "policy": policy.name,
            "keep": {pid: sorted(reasons) for pid, reasons in sorted(plan.keep.items())},
            "prune": list(plan.prune),
            "retention_shortened": shortened,
        }
    if not dry_run:
        with suppress(VmvaultError):  # the rows are right already; this only refreshes them
            ctx.catalog().rebuild(vault.config.vault_id, vault.points())
    return result
