"""Instant VM recovery (`vmvault vm instant-restore`): a VM running from a recovery point
within seconds, its disks moved to local storage later while it runs.

Not to be confused with ``snapshot/instant.py`` (local snapshot copies kept after a backup
so that a restore can skip the vault). Here nothing is restored first: the point's disks are
served over NBD and the VM boots from overlays on them (recovery/boot.py). ``finish`` makes
the overlays whole (recovery/finish.py), after which the exports end and the VM no longer
depends on the vault; ``stop`` discards the VM and everything made for it.

Each instant VM has a record in a private folder of the host (``$VMVAULT_INSTANT_DIR``,
else ``$XDG_RUNTIME_DIR/vmvault/instant-vms``, ``/run/vmvault/instant-vms`` for root, the
cache folder's ``instant-vms``), and there, in ``NAME/``, QEMU's console log and sockets.
The record is reserved first (created exclusively, so one name boots once) and removed if
the boot fails: a failed command leaves no VM behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, NotRequired, cast

from pydantic import ValidationError

from vmvault.app.context import Context
from vmvault.app.point_ref import resolve_point
from vmvault.errors import Conflict, NotFound, UsageError
from vmvault.export.launch import start_export
from vmvault.export.state import process_start, runtime_dir, write_json
from vmvault.inventory import BootSettings, Inventory, check_new_vm_name
from vmvault.recovery.boot import (
    BIND_GRACE,
    BootedVm,
    boot_point,
    discard,
    end_export_ids,
    end_exports,
)
from vmvault.recovery.finish import rebase_offline, stream_online
from vmvault.recovery.machine import VmPaths
from vmvault.recovery.qemu import running

INSTANT_DIR_ENV = "VMVAULT_INSTANT_DIR"


class InstantVm(BootedVm):
    finished: str | None  # when its disks stopped depending on the vault
    status: NotRequired[str]  # as listed: running, stopped, finished
    seconds: NotRequired[float]  # from the command to the guest's CPUs running


def instant_dir() -> Path:
    return runtime_dir(INSTANT_DIR_ENV, "instant-vms")


def boot_settings(
    ctx: Context, inventory: Inventory | None, vm: str, point_ref: str, changes: dict[str, Any]
) -> BootSettings:
    """The machine: the inventory's ``boot`` table for the VM, else the one recorded in the
    point (the VM's entry at backup time), else the defaults; ``changes`` (the command's
    options) over it."""
    chosen: dict[str, Any] | None = None
    if inventory is not None and any(v.name == vm for v in inventory.vms):
        boot = inventory.vm(vm).boot
        chosen = boot.model_dump() if boot is not None else None
    if chosen is None:
        vault = ctx.open_vault(load_index=False)
        point = vault.get_point(resolve_point(vault, point_ref, vm))
        chosen = point.get("vm_config", {}).get("boot") or {}
    updates = {k: v for k, v in changes.items() if v is not None}
    try:
        settings = BootSettings.model_validate({**chosen, **updates})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"boot settings: {problems}") from None
    for name in ("kernel", "initrd"):
        if (path := getattr(settings, name)) and not Path(path).is_file():
            raise UsageError(f"{name} {path} is not a file")
    return settings


def instant_restore(
    ctx: Context,
    vm: str,
    *,
    point: str,
    new_name: str,
    storage: Path,
    boot: BootSettings,
) -> InstantVm:
    """Boot ``point`` of ``vm`` as the new VM ``new_name``, its overlays in
    ``storage/NEW_NAME/``."""
    check_new_vm_name(new_name)
    directory = instant_dir()
    path = directory / f"{new_name}.json"
    target = storage.absolute() / new_name
    if target.exists():
        raise Conflict(f"{target} already exists")
    _reserve(path, new_name)
    # Under a name just claimed, a folder of that name is a dead VM's leftover.
    shutil.rmtree(directory / new_name, ignore_errors=True)
    began = time.monotonic()
    try:
        booted = boot_point(
            ctx,
            point,
            vm=vm,
            name=new_name,
            boot=boot,
            storage=target,
            paths=VmPaths(directory / new_name),
            network=boot.network,
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    record = cast(InstantVm, {**booted, "finished": None})
    write_json(path, record)
    return {**record, "status": "running", "seconds": round(time.monotonic() - began, 2)}


def _reserve(path: Path, name: str) -> None:
    """Claim the name: the record's file, created exclusively (a second command booting
    the same name at the same time is refused)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise Conflict(
            f"an instant VM named {name} exists (see `vmvault vm instant-restore --list`)"
        ) from None
    with os.fdopen(fd, "w") as f:
        json.dump({"name": name, "starting": os.getpid()}, f)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _status(record: dict[str, Any]) -> str:
    if "pid" not in record:
        return "starting" if process_start(int(record.get("starting", 0))) else "failed"
    alive = running(record["pid"], record["start"])
    if record.get("finished"):
        return "finished" if alive else "gone"
    return "running" if alive else "stopped"


def list_instant_vms() -> list[dict[str, Any]]:
    """The instant VMs of this host, each with its ``status``: starting, running, stopped
    (QEMU gone, overlays kept: finish or stop it), finished (running from its own disks).
    Records of finished VMs whose QEMU has ended, and of starts that died, are dropped."""
    found = []
    for path in sorted(instant_dir().glob("*.json")):
        record = _read(path)
        if record is None:
            continue
        status = _status(record)
        if status in ("gone", "failed"):
            path.unlink(missing_ok=True)
            shutil.rmtree(path.with_suffix(""), ignore_errors=True)  # its console, sockets
            continue
        found.append({**record, "status": status})
    return found


def _find(name: str) -> tuple[Path, InstantVm]:
    path = instant_dir() / f"{name}.json"
    record = _read(path)
    if record is None or "pid" not in record:
        raise NotFound(f"no instant VM named {name!r} (see `vmvault vm instant-restore --list`)")
    return path, record  # type: ignore[return-value]


def finish_instant_vm(ctx: Context, name: str) -> InstantVm:
    """Move the VM's disks off the vault: its overlays become whole qcow2 files where they
    are, then its exports end. Running: while the guest runs (QMP block-stream). Stopped:
    offline, the exports started again where the overlays' headers expect them."""
    path, record = _find(name)
    if record.get("finished"):
        raise Conflict(f"instant VM {name} is finished already")
    if running(record["pid"], record["start"]):
        stream_online(VmPaths(Path(record["state"])).qmp, [d["node"] for d in record["disks"]])
        end_exports(record)
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        write_json(path, record)
        return {**record, "status": "finished"}
    end_exports(record)
    started: list[str] = []
    try:
        for disk in record["disks"]:
            export = start_export(
                ctx,
                record["point"],
                disk=disk["name"],
                socket_path=disk["socket"],
                expires_in=BIND_GRACE,
            )
            started.append(export["id"])
        for disk in record["disks"]:
            rebase_offline(Path(disk["overlay"]))
    finally:
        end_export_ids(started)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    path.unlink(missing_ok=True)  # nothing of it runs: no longer an instant VM
    shutil.rmtree(record["state"], ignore_errors=True)
    return {**record, "status": "gone"}


def stop_instant_vm(name: str) -> InstantVm:
    """Discard an instant VM: QEMU killed, its exports ended, the overlays (the guest's
    writes) and its state removed. A finished VM is refused: its disks are the only copy
    of what it wrote since."""
    path = instant_dir() / f"{name}.json"
    record = _read(path)
    if record is not None and "pid" not in record and _status(record) == "failed":
        path.unlink(missing_ok=True)  # a start that died before booting: only its claim
        return {**record, "status": "discarded"}  # type: ignore[typeddict-item]
    path, found = _find(name)
    if found.get("finished"):
        raise Conflict(
            f"instant VM {name} is finished: its disks in {found['storage']} are its own now; "
            "shut it down from the guest (or over QMP)"
        )
    discard(found)
    path.unlink(missing_ok=True)
    return {**found, "status": "discarded"}
