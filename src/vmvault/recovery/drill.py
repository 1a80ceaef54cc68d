"""Restore drills: a point booted in an isolated QEMU to prove it boots ("boot-verified").

The point is booted the way an instant VM is (recovery/boot.py: NBD exports, overlays,
QEMU), without a network and in a private temporary folder; the drill waits for the VM's
one sign of life the inventory names (``DrillSettings``): a text on the serial console,
the guest agent answering ``guest-ping``, or a script exiting 0. Whatever happens (a sign, a
timeout, a failed boot) the VM, its exports and its overlays are gone when the drill
returns, and QEMU dies with the drill's process should that be killed (its exports end with
QEMU). The outcome is recorded in the catalog by point; a failure raises a ``drill_failed``
alert. A failed drill never fails the backup it follows: the point is as good as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmvault.alerts.store import raise_alert
from vmvault.app.context import Context
from vmvault.catalog.drills import record_drill
from vmvault.consistency import GuestAgent, GuestAgentError
from vmvault.errors import VmvaultError
from vmvault.inventory import BootSettings, DrillSettings, Inventory
from vmvault.recovery.boot import BootedVm, boot_point, discard
from vmvault.recovery.machine import VmPaths
from vmvault.recovery.qemu import running

POLL = 0.2  # seconds between looks for the sign of life


class _NoSign(Exception):
    """The drill failed: why, in one line."""


def signal_name(settings: DrillSettings) -> str:
    if settings.console is not None:
        return "console"
    return "guest_agent" if settings.guest_agent else "script"


def run_drill(
    ctx: Context,
    vm: str,
    point_ref: str,
    settings: DrillSettings,
    boot: BootSettings,
) -> dict[str, Any]:
    """Boot ``point_ref`` of ``vm`` isolated, wait for its sign of life, end it; the
    outcome, as recorded."""
    vault = ctx.open_vault(load_index=False)
    began = time.monotonic()
    at = datetime.now(UTC)
    folder = Path(tempfile.mkdtemp(prefix="vmvault-drill-"))
    point_id = point_ref
    try:
        booted = boot_point(
            ctx,
            point_ref,
            vm=vm,
            name=f"drill-{vm}",
            boot=boot,
            storage=folder / "disks",
            paths=VmPaths(folder / "vm"),
            network=False,
            die_with_parent=True,
        )
        point_id = booted["point"]
        try:
            _wait_for_sign(settings, booted, began + settings.timeout)
        finally:
            discard(booted)
        passed, message = True, f"the guest's {signal_name(settings)} answered"
    except _NoSign as why:
        passed, message = False, str(why)
    except VmvaultError as exc:
        passed, message = False, f"the point did not boot: {exc.message}"
    except Exception as exc:  # whatever breaks a drill is its failure, never the backup's
        passed, message = False, f"the drill broke: {type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.monotonic() - began
    catalog = ctx.catalog()
    vault_id = vault.config.vault_id
    outcome = record_drill(
        catalog,
        vault_id,
        point_id=point_id,
        vm=vm,
        at=at,
        passed=passed,
        signal=signal_name(settings),
        seconds=seconds,
        message=message,
    )
    if not passed:
        raise_alert(
            catalog,
            vault_id,
            "drill_failed",
            f"restore drill of {vm}'s point {point_id} failed: {message}",
            vm=vm,
            details={"point": point_id},
        )
    return outcome


def drill_settings(inventory: Inventory, vm: str) -> tuple[DrillSettings, BootSettings] | None:
    """The VM's drill and machine if the inventory asks for a drill after each backup."""
    entry = inventory.vm(vm)
    if entry.drill is None or not entry.drill.after_backup:
        return None
    return entry.drill, entry.boot or BootSettings()


def _wait_for_sign(settings: DrillSettings, booted: BootedVm, deadline: float) -> None:
    paths = VmPaths(Path(booted["state"]))
    if settings.script is not None:
        _run_script(settings.script, booted, paths, deadline)
        return
    while True:
        if not running(booted["pid"], booted["start"]):
            raise _NoSign("QEMU stopped before the guest gave a sign of life")
        if settings.console is not None and _console_has(paths.console, settings.console):
            return
        if settings.guest_agent and _agent_answers(paths.agent, deadline):
            return
        if time.monotonic() >= deadline:
            raise _NoSign(f"no sign of life within {settings.timeout:g} s ({_what(settings)})")
        time.sleep(POLL)


def _what(settings: DrillSettings) -> str:
    if settings.console is not None:
        return f"{settings.console!r} never appeared on the serial console"
    return "the guest agent never answered"


def _console_has(console: Path, text: str) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return text.encode() in console.read_bytes()
    return False


def _agent_answers(socket_path: Path, deadline: float) -> bool:
    """Whether the guest agent answers a ping; QEMU accepts the connection whether or not
    an agent runs in the guest, so only an answer counts."""
    wait = max(min(5.0, deadline - time.monotonic()), 0.1)
    try:
        agent = GuestAgent(str(socket_path), timeout=wait)
    except GuestAgentError:
        return False
    try:
        agent.execute("guest-ping", timeout=wait)
        return True
    except GuestAgentError:
        return False
    finally:
        agent.close()


def _run_script(script: str, booted: BootedVm, paths: VmPaths, deadline: float) -> None:
    """The user's check, given the time left: exit 0 is the sign of life. It learns where
    the VM is from its environment; its whole process group ends at the deadline."""
    env = {
        **os.environ,
        "VMVAULT_DRILL_VM": booted["vm"],
        "VMVAULT_DRILL_POINT": booted["point"],
        "VMVAULT_DRILL_CONSOLE": str(paths.console),
        "VMVAULT_DRILL_QMP": str(paths.qmp),
        "VMVAULT_DRILL_AGENT": str(paths.agent),
    }
    try:
        process = subprocess.Popen(
            [script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise _NoSign(f"cannot run the check script {script}: {exc.strerror}") from None
    try:
        output, _ = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise _NoSign(f"the check script {script} did not finish in time") from None
    if process.returncode != 0:
        lines = output.decode(errors="replace").strip().splitlines()
        said = f": {lines[-1]}" if lines else ""
        raise _NoSign(f"the check script {script} exited {process.returncode}{said}")
