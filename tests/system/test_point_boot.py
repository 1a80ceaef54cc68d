"""Booting recovery points under QEMU. `vmvault vm instant-restore`: a real guest boots
from a point served over NBD, runs while its disks are streamed into local storage, and
nothing is left behind by a failure or a discard. Restore drills: the point a backup made
is booted in isolation and boot-verified by a text on its console, or fails, alerts and
leaves nothing behind when the guest never gives it.

The guest (tests/support/bootguest.py) boots Debian's kernel from an ext4 disk that was
backed up, prints the disk's marker file on its serial console and a tick every second.
Every QEMU and nbdkit a test starts is killed at its end, whatever happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import bootguest
from support.cli import run_cli
from vmvault.alerts.store import list_alerts
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.catalog.drills import latest_drills
from vmvault.export.launch import list_exports
from vmvault.export.state import EXPORT_DIR_ENV, is_running, process_start, read_records
from vmvault.model.point import RecoveryPoint
from vmvault.recovery.instant_vm import INSTANT_DIR_ENV, list_instant_vms
from vmvault.snapshot.qmp_client import QmpConnection

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("nbdkit", "qemu-img", "qemu-system-x86_64")),
        reason="needs nbdkit and QEMU (make sysdeps)",
    ),
]

BOOT_TIMEOUT = 120.0  # a TCG boot on 2 busy cores; about 15 s when they are idle
DATA = (b"data disk " * (1 << 17))[: 1 << 20]  # a second disk of 1 MiB


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Short private folders for exports and instant VMs (a socket's path must fit in 108
    bytes); every QEMU and nbdkit recorded there is killed at the end."""
    base = Path(tempfile.mkdtemp(prefix="vi-"))
    monkeypatch.setenv(EXPORT_DIR_ENV, str(base / "x"))
    monkeypatch.setenv(INSTANT_DIR_ENV, str(base / "v"))
    (base / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(base / "tmp"))  # a drill's overlays and sockets
    try:
        yield base
    finally:
        for record in (base / "v").glob("*.json"):
            doc = json.loads(record.read_text())
            if "pid" in doc and process_start(doc["pid"]) == doc["start"]:
                os.kill(doc["pid"], signal.SIGKILL)
        for _, export in read_records(base / "x") if (base / "x").exists() else []:
            if is_running(export):
                os.kill(export["pid"], signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def _backup_guest(ctx: Context, tmp_path: Path, *, data_disk: bool) -> tuple[str, RecoveryPoint]:
    """A backed-up guest disk (after a small data disk, if asked: the OS disk must still
    come first to the VM); its marker."""
    try:
        bootguest.assets()
    except bootguest.dmvm.Unavailable as exc:
        pytest.fail(f"the test guest cannot be built: {exc}")
    marker = f"marker-{secrets.token_hex(6)}"
    disks = [bootguest.make_disk(tmp_path / "guest.img", marker)]
    specs = [DiskSpec("os", str(disks[0]), role="os")]
    if data_disk:
        disks.append(tmp_path / "data.img")
        disks[-1].write_bytes(DATA)
        specs.insert(0, DiskSpec("data", str(disks[-1])))
    point = run_backup(ctx, "guest01", specs)
    for disk in disks:
        disk.unlink()  # the VM boots from the vault, nothing else
    return marker, point


@pytest.fixture
def guest_point(ctx: Context, tmp_path: Path) -> tuple[str, RecoveryPoint]:
    return _backup_guest(ctx, tmp_path, data_disk=False)


def _cli(ctx: Context, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("vm", "instant-restore", *args, "--vault", ctx.vault_path, "--json")


def _boot_args(name: str, storage: Path) -> list[str]:
    kernel, initrd = bootguest.assets()
    return [
        "guest01",
        "--as", name,
        "--storage", str(storage),
        "--kernel", str(kernel),
        "--initrd", str(initrd),
        "--append", bootguest.APPEND,
        "--accel", "tcg",  # KVM may be offered without working nested virtualisation
        "--memory", "256",
    ]  # fmt: skip


def _listed(ctx: Context) -> list[dict[str, Any]]:
    done = run_cli("vm", "instant-restore", "--list", "--json")
    assert done.returncode == 0, done.stderr
    vms: list[dict[str, Any]] = json.loads(done.stdout)["vms"]
    return vms


def _exports() -> list[dict[str, Any]]:
    done = run_cli("export", "--list", "--json")
    assert done.returncode == 0, done.stderr
    exports: list[dict[str, Any]] = json.loads(done.stdout)["exports"]
    return exports


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _console(doc: dict[str, Any]) -> str:
    try:
        return Path(doc["state"], "console.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _ticks(doc: dict[str, Any]) -> int:
    lines = [line for line in _console(doc).splitlines() if line.startswith("guest: tick ")]
    return int(lines[-1].split()[-1]) if lines else 0


def _image_info(image: Path) -> dict[str, Any]:
    done = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(image)], capture_output=True, check=True
    )
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def _guest_sees(overlay: Path, tmp_path: Path) -> bytes:
    """The disk's bytes as the guest reads them (through any backing file)."""
    raw = tmp_path / "disk.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(overlay), str(raw)], check=True
    )
    return raw.read_bytes()


def _vault_objects(root: str) -> dict[str, str]:
    """The vault's files but the lock objects exports hold while they run."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(root).rglob("*"))
        if path.is_file() and not str(path.relative_to(root)).startswith("locks/")
    }


def test_instant_vm_boots_from_the_vault_and_finishes_onto_local_disks_while_running(
    ctx: Context, runtime: Path, tmp_path: Path
) -> None:
    marker, point = _backup_guest(ctx, tmp_path, data_disk=True)
    assert [d["name"] for d in point["disks"]] == ["data", "os"]
    vault_before = _vault_objects(ctx.vault_path)
    storage = tmp_path / "storage"

    done = _cli(ctx, *_boot_args("guest01-r", storage))
    assert done.returncode == 0, done.stdout + done.stderr
    vm = json.loads(done.stdout)
    assert (vm["status"], vm["point"], vm["accel"]) == ("running", point["id"], "tcg")
    disk, data = vm["disks"]  # the OS disk first: the guest mounts /dev/vda
    assert (disk["name"], data["name"]) == ("os", "data")
    overlay = Path(disk["overlay"])
    assert overlay == storage / "guest01-r" / "os.qcow2"
    assert _image_info(overlay)["backing-filename"] == disk["uri"]  # reads come from the export
    exports = {e["id"]: e for e in _exports()}
    assert sorted(exports) == sorted([disk["export"], data["export"]])
    assert exports[disk["export"]]["owner"] == f"VM guest01-r (pid {vm['pid']})"
    stop_all = run_cli("export", "--stop", "all", "--json")  # never a running VM's disks
    assert json.loads(stop_all.stdout) == {"stopped": []}, stop_all.stderr
    refused = run_cli("export", "--stop", disk["export"])
    assert refused.returncode == 2 and "finish or stop that VM" in refused.stderr

    # The guest boots from the point and reads its marker file from the disk.
    assert _wait_for(lambda: f"marker: {marker}" in _console(vm), BOOT_TIMEOUT), _console(vm)
    assert [v["status"] for v in _listed(ctx)] == ["running"]

    # Finish while the guest runs: the overlay becomes the whole disk, the export ends.
    done = _cli(ctx, "--finish", "guest01-r")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["status"] == "finished"
    assert list_exports() == []
    ticks = _ticks(vm)
    assert _wait_for(lambda: _ticks(vm) >= ticks + 2, 60), "the guest stopped after finish"
    assert "backing-filename" not in _image_info(overlay)
    assert "backing-filename" not in _image_info(Path(data["overlay"]))
    assert [v["status"] for v in _listed(ctx)] == ["finished"]

    # Discarding a finished VM would lose its only disks: refused in one line.
    refused = run_cli("vm", "instant-restore", "--stop", "guest01-r")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "finished" in refused.stderr

    # The guest shuts down (here: over QMP, as its owner would); the disk is whole and
    # holds the point's data and the guest's own write, and the vault is as it was.
    with QmpConnection(str(Path(vm["state"], "qmp.sock"))) as qmp:
        qmp.execute("quit")
    assert _wait_for(lambda: process_start(vm["pid"]) != vm["start"], 30)
    assert list_instant_vms() == []
    os_disk = _guest_sees(overlay, tmp_path)
    assert marker.encode() in os_disk
    assert b"UTC 20" in os_disk  # the date the guest wrote into /boots.log
    assert _guest_sees(Path(data["overlay"]), tmp_path) == DATA
    assert _vault_objects(ctx.vault_path) == vault_before


def test_instant_vm_failures_and_discard_leave_nothing_behind(
    ctx: Context, guest_point: tuple[str, RecoveryPoint], runtime: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    args = _boot_args("guest01-r", storage)

    # QEMU refuses the kernel after the export and the overlay were made: all undone.
    garbage = tmp_path / "not-a-kernel"
    garbage.write_bytes(b"\0" * 4096)
    failed = run_cli(
        "vm", "instant-restore", *args, "--kernel", str(garbage), "--vault", ctx.vault_path
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stderr.startswith("error: QEMU exited") and failed.stderr.count("\n") == 1
    assert list_instant_vms() == [] and list_exports() == []
    assert not (storage / "guest01-r").exists()
    assert list(Path(ctx.vault_path, "locks").iterdir()) == []

    # A name boots once; --stop discards the VM whether it booted yet or not.
    done = _cli(ctx, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    vm = json.loads(done.stdout)
    again = _cli(ctx, *args)
    assert again.returncode == 2 and json.loads(again.stdout)["error"]["code"] == "conflict"
    stopped = _cli(ctx, "--stop", "guest01-r")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert json.loads(stopped.stdout)["status"] == "discarded"
    assert process_start(vm["pid"]) != vm["start"]
    assert list_instant_vms() == [] and list_exports() == []
    assert not (storage / "guest01-r").exists() and not Path(vm["state"]).exists()
    assert _wait_for(lambda: list(Path(ctx.vault_path, "locks").iterdir()) == [], 10)


def test_instant_vm_whose_qemu_died_is_finished_offline(
    ctx: Context, guest_point: tuple[str, RecoveryPoint], runtime: Path, tmp_path: Path
) -> None:
    marker, _ = guest_point
    done = _cli(ctx, *_boot_args("guest01-r", tmp_path / "storage"))
    assert done.returncode == 0, done.stdout + done.stderr
    vm = json.loads(done.stdout)
    os.kill(vm["pid"], signal.SIGKILL)  # a crash: its exports end with it
    assert _wait_for(lambda: list_exports() == [], 30)
    assert [v["status"] for v in list_instant_vms()] == ["stopped"]

    done = _cli(ctx, "--finish", "guest01-r")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["status"] == "gone"
    assert list_instant_vms() == [] and list_exports() == []
    overlay = Path(vm["disks"][0]["overlay"])
    assert "backing-filename" not in _image_info(overlay)
    assert marker.encode() in _guest_sees(overlay, tmp_path)  # the point's data, copied in


def _qemu_named(name: str) -> list[int]:
    """The pids of QEMU processes started with ``-name NAME``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and name.encode() in argv:
            found.append(int(proc.name))
    return found


def _drill_inventory(tmp_path: Path, vm: str, disk: Path, drill: str) -> Path:
    kernel, initrd = bootguest.assets()
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        f"""
[[vms]]
name = "{vm}"
  [vms.boot]
  accel = "tcg"
  memory_mb = 256
  kernel = "{kernel}"
  initrd = "{initrd}"
  append = "{bootguest.APPEND}"
  [vms.drill]
  {drill}
  [[vms.disks]]
  name = "os"
  path = "{disk}"
  role = "os"
"""
    )
    return inventory


def _left_behind(ctx: Context, runtime: Path, vm: str) -> list[str]:
    """What a drill must not leave: its QEMU, exports, temporary files, vault locks."""
    left = [f"QEMU pid {pid}" for pid in _qemu_named(f"drill-{vm}")]
    left += [f"export {e['id']}" for e in list_exports()]
    left += [str(p) for p in (runtime / "tmp").iterdir()]
    return left + [str(p) for p in Path(ctx.vault_path, "locks").iterdir()]


def test_drill_after_backup_boot_verifies_the_point(
    ctx: Context, runtime: Path, tmp_path: Path
) -> None:
    vm = f"drilled-{secrets.token_hex(3)}"
    marker = f"marker-{secrets.token_hex(6)}"
    disk = bootguest.make_disk(tmp_path / "guest.img", marker)
    drill = f'console = "marker: {marker}"\n  timeout = {BOOT_TIMEOUT}'
    inventory = _drill_inventory(tmp_path, vm, disk, drill)

    done = run_cli(
        "vm", "backup", vm, "--inventory", str(inventory), "--vault", ctx.vault_path,
        "--catalog", str(ctx.catalog_url), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    point = json.loads(done.stdout)
    assert point["drill"]["result"] == "boot-verified", point["drill"]
    assert point["drill"]["point"] == point["id"] and point["drill"]["signal"] == "console"
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    recorded = latest_drills(ctx.catalog(), vault_id, [point["id"]])
    assert recorded[point["id"]]["result"] == "boot-verified"
    assert _left_behind(ctx, runtime, vm) == []


def test_drill_that_never_sees_its_sign_fails_alerts_and_leaves_nothing(
    ctx: Context, runtime: Path, tmp_path: Path
) -> None:
    vm = f"silent-{secrets.token_hex(3)}"
    disk = bootguest.make_disk(tmp_path / "guest.img", "whatever")
    point = run_backup(ctx, vm, [DiskSpec("os", str(disk), role="os")])
    inventory = _drill_inventory(tmp_path, vm, disk, 'console = "never printed"')

    began = time.monotonic()
    done = run_cli(
        "vm", "drill", vm, "--timeout", "4", "--inventory", str(inventory),
        "--vault", ctx.vault_path, "--catalog", str(ctx.catalog_url), "--json",
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert time.monotonic() - began < 60
    result = json.loads(done.stdout)
    assert result["result"] == "failed" and result["point"] == point["id"]
    assert "'never printed' never appeared on the serial console" in result["message"]
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    _, alerts = list_alerts(ctx.catalog(), vault_id)
    assert [(a.kind, a.vm) for a in alerts] == [("drill_failed", vm)]
    assert latest_drills(ctx.catalog(), vault_id, [point["id"]])[point["id"]]["result"] == "failed"
    assert _left_behind(ctx, runtime, vm) == []
