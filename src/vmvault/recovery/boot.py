"""Booting a recovery point under QEMU without restoring it: all of it or none of it.

Each disk of the point is exported over NBD (export/launch.py), a qcow2 overlay is made
whose backing file is the export (the guest's writes land in the overlay; the vault is only
ever read), and QEMU boots from the overlays. The exports are then bound to QEMU's
process: they no longer expire, and end by themselves once QEMU is gone. Until then they
would expire after ``BIND_GRACE``, so not even a command killed between two steps leaves an
export running for long. Any failure undoes what was done, newest first, and is raised.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TypedDict

from vmvault.app.context import Context
from vmvault.app.point_ref import resolve_point
from vmvault.errors import Conflict, NotFound, UsageError, VmvaultError
from vmvault.export.launch import bind_export, start_export, stop_exports
from vmvault.export.state import process_start
from vmvault.inventory import BootSettings
from vmvault.model.point import DiskEntry
from vmvault.recovery.machine import BootDisk, VmPaths, accelerator, qemu_command
from vmvault.recovery.qemu import QemuFailed, start_qemu, stop_qemu

BIND_GRACE = 600.0  # seconds an export waits for its QEMU before it expires


class OverlayFailed(VmvaultError):
    code = "overlay_failed"


class BootedDisk(TypedDict):
    name: str
    node: str  # its QMP names: ``node`` (device), ``node``-overlay (format node)
    overlay: str
    export: str  # the export's id
    uri: str
    socket: str  # the export's Unix socket: the overlay's backing file names it
    size: int


class BootedVm(TypedDict):
    name: str
    vm: str
    point: str
    storage: str  # the folder of the overlays
    state: str  # the folder of the console log and the sockets (``VmPaths``)
    disks: list[BootedDisk]
    pid: int
    start: int  # the process's start time: with the pid, names this QEMU only
    accel: str
    command: list[str]
    started: str  # ISO 8601, UTC


def boot_order(disks: list[DiskEntry]) -> list[DiskEntry]:
    """The OS disk first (the firmware boots the first), the others in the point's order."""
    return sorted(disks, key=lambda d: d.get("role") != "os")


def boot_point(
    ctx: Context,
    point_ref: str,
    *,
    vm: str | None,
    name: str,
    boot: BootSettings,
    storage: Path,
    paths: VmPaths,
    network: bool,
    die_with_parent: bool = False,
) -> BootedVm:
    """Boot ``point_ref`` (of ``vm``, for 'latest') as VM ``name``: overlays in
    ``storage`` (made here, must not exist), QEMU's files in ``paths.folder``."""
    vault = ctx.open_vault(load_index=False)
    point_id = resolve_point(vault, point_ref, vm)
    point = vault.get_point(point_id)
    if vm is not None and point["vm"] != vm:
        raise UsageError(f"point {point_id} is of VM {point['vm']}, not {vm}")
    if not point["disks"]:
        raise NotFound(f"point {point_id} has no disk to boot")
    with ExitStack() as undo:
        for folder in (storage, paths.folder):
            try:
                folder.mkdir(parents=True, mode=0o700)
            except FileExistsError:
                raise Conflict(f"{folder} already exists") from None
            except OSError as exc:
                raise UsageError(f"cannot make {folder}: {exc.strerror}") from None
            undo.callback(shutil.rmtree, folder, ignore_errors=True)
        disks: list[BootedDisk] = []
        for index, entry in enumerate(boot_order(point["disks"])):
            export = start_export(ctx, point_id, disk=entry["name"], expires_in=BIND_GRACE)
            undo.callback(end_export_ids, [export["id"]])
            overlay = storage / f"{entry['name']}.qcow2"
            _make_overlay(overlay, export["uri"], export["size"])
            disks.append(
                {
                    "name": entry["name"],
                    "node": f"disk{index}",
                    "overlay": str(overlay),
                    "export": export["id"],
                    "uri": export["uri"],
                    "socket": str(export["socket"]),
                    "size": export["size"],
                }
            )
        accel = accelerator(boot)
        command = qemu_command(
            boot,
            accel,
            [BootDisk(d["name"], d["node"], Path(d["overlay"])) for d in disks],
            paths,
            name=name,
            network=network,
        )
        pid = start_qemu(command, paths, die_with_parent=die_with_parent)
        start = process_start(pid)
        if start is None:
            raise QemuFailed(f"QEMU (pid {pid}) stopped at once: see {paths.log}")
        undo.callback(stop_qemu, pid, start, paths.qmp)
        for disk in disks:
            bind_export(disk["export"], pid, f"VM {name}")
        undo.pop_all()
    return {
        "name": name,
        "vm": point["vm"],
        "point": point_id,
        "storage": str(storage),
        "state": str(paths.folder),
        "disks": disks,
        "pid": pid,
        "start": start,
        "accel": accel,
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    }


def _make_overlay(path: Path, backing_uri: str, size: int) -> None:
    """A qcow2 file whose backing file is the export (``-u``: not opened now, so the
    overlay is made in milliseconds whatever the disk's size)."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", backing_uri]
    try:
        done = subprocess.run(
            [*argv, str(path), str(size)], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        raise OverlayFailed(f"cannot run qemu-img: {exc.strerror}") from None
    if done.returncode != 0:
        raise OverlayFailed(f"qemu-img create {path}: {done.stderr.strip()}")


def end_export_ids(ids: list[str]) -> None:
    """Stop exports that may have ended already (their QEMU gone)."""
    for export_id in ids:
        with contextlib.suppress(NotFound):
            stop_exports(export_id, bound_too=True)


def discard(booted: BootedVm) -> None:
    """End a booted VM and everything made for it: QEMU, its exports, the overlays (the
    guest's writes), its state folder."""
    stop_qemu(booted["pid"], booted["start"], VmPaths(Path(booted["state"])).qmp)
    end_exports(booted)
    shutil.rmtree(booted["storage"], ignore_errors=True)
    shutil.rmtree(booted["state"], ignore_errors=True)


def end_exports(booted: BootedVm) -> None:
    end_export_ids([d["export"] for d in booted["disks"]])
