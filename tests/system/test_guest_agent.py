"""File-system freeze through the QEMU guest agent, with a real qemu-ga and a real file system.

qemu-ga runs on this machine as the "guest" (``-m unix-listen``), so the guest's mount
table is this machine's. Every freeze therefore names one small loop-mounted ext4 file
system, and the agent is started with ``guest-fsfreeze-freeze`` (freeze everything)
disabled, so that not even a bug can freeze this machine's root file system.
``guest-fsfreeze-thaw`` thaws every file system in the agent's mount table: the agent runs
in a mount namespace of its own where only the test's file system (besides / and the
virtual ones) is mounted, so that it cannot thaw what tests running beside it froze.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.freezekit import blocked, reap_writers, sigterm_while_frozen, unfreeze, writable
from vmvault.app.context import Context
from vmvault.app.vm_backup import run_vm_backup
from vmvault.consistency import (
    Consistency,
    GuestAgent,
    GuestAgentError,
    GuestAgentFreezer,
    ScriptConfig,
    quiesce,
)
from vmvault.inventory import InventoryError, parse_inventory

pytestmark = pytest.mark.qemu

assert os.geteuid() == 0, "tests/test_guest_agent.py needs root (mount, freeze)"

QEMU_GA = shutil.which("qemu-ga") or shutil.which("qemu-ga", path="/usr/sbin:/sbin")
# Commands a test never needs from an agent running as root on this machine; above all
# the freeze of every file system.
BLOCKED = (
    "guest-fsfreeze-freeze,guest-shutdown,guest-suspend-disk,guest-suspend-ram,"
    "guest-suspend-hybrid,guest-exec,guest-file-open,guest-set-user-password"
)

# Run under `unshare --mount --propagation private`: hide every mount but /, the virtual
# file systems and the test's own (argv[1]), then become qemu-ga (argv[2:]).
LAUNCHER = r"""
import os, re, subprocess, sys
keep = {"/", "/proc", "/sys", "/dev", sys.argv[1]}
virtual = ("/proc/", "/sys/", "/dev/")

def foreign():
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p) for p in points]
    hide = {p for p in points if p not in keep and not p.startswith(virtual)}
    return sorted(hide, key=len, reverse=True)

for point in foreign():
    subprocess.run(["umount", "-l", point], capture_output=True)
if foreign():
    sys.exit("mounts left visible to the agent: " + ", ".join(foreign()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small loop-mounted ext4 file system; unfrozen and unmounted at the end."""
    base = tmp_path_factory.mktemp("qga-fs")
    image, mnt = base / "fs.img", base / "mnt"
    with open(image, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
    _run("mkfs.ext4", "-q", "-F", str(image))
    mnt.mkdir()
    _run("mount", "-o", "loop", str(image), str(mnt))
    try:
        yield mnt
    finally:
        unfreeze(mnt)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


class Agent:
    """A qemu-ga process listening on a unix socket, with its own state directory."""

    def __init__(self, base: Path, mount: Path) -> None:
        assert QEMU_GA, "qemu-ga not found: install qemu-guest-agent (make sysdeps)"
        self.base = base
        self.mount = mount
        self.socket = str(base / "qga.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert QEMU_GA is not None
        state = self.base / "state"
        state.mkdir(exist_ok=True)
        Path(self.socket).unlink(missing_ok=True)
        # The pid file is written only when daemonized; a private path anyway, so that
        # agents of parallel tests never share the default one in /var/run.
        argv = ["unshare", "--mount", "--propagation", "private", "--"]
        argv += [sys.executable, "-c", LAUNCHER, str(self.mount)]
        argv += [QEMU_GA, "-m", "unix-listen", "-p", self.socket, "-t", str(state)]
        argv += ["--pidfile", str(self.base / "qga.pid"), "-b", BLOCKED]
        with open(self.base / "qga.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(self.socket)
                return
            assert self.proc.poll() is None, (self.base / "qga.log").read_text()
            time.sleep(0.05)
        raise AssertionError("qemu-ga did not start listening")

    def status(self) -> str:
        agent = GuestAgent(self.socket)
        try:
            return str(agent.execute("guest-fsfreeze-status"))
        finally:
            agent.close()

    def kill(self) -> None:
        """SIGKILL: qemu-ga ignores SIGTERM while it holds file systems frozen."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def agent(tmp_path: Path, mount: Path) -> Iterator[Agent]:
    """A fresh agent per test; the mount is unfrozen and blocked writers reaped after it."""
    reap_writers()
    ga = Agent(tmp_path, mount)
    ga.start()
    try:
        yield ga
    finally:
        if ga.proc is not None and ga.proc.poll() is None:
            ga.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            # A frozen agent ignores SIGTERM: thaw through it first.
            with contextlib.suppress(GuestAgentError):
                GuestAgent(ga.socket, timeout=2).execute("guest-fsfreeze-thaw")
        unfreeze(mount)
        ga.stop()
        reap_writers()


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o700)
    return str(path)


# ---------------------------------------------------------------------------- freezing


def test_freezes_only_the_named_mount_during_the_snapshot(
    agent: Agent, mount: Path, tmp_path: Path
) -> None:
    (mount / "probe").unlink(missing_ok=True)
    freezer = GuestAgentFreezer(agent.socket, [str(mount) + "/"])  # normalised for the agent
    with quiesce(None, freezer, vm_running=True) as q:
        assert q.freeze == "frozen"
        assert freezer.status() == "frozen"
        writer = blocked(mount)
        assert writable(tmp_path)  # another file system: untouched
    assert writer.wait(timeout=5) == 0  # the blocked write completes once thawed
    assert (mount / "probe").read_text() == "x\n"
    assert writable(mount)
    assert agent.status() == "thawed"
    assert q.consistency == Consistency(
        "file-system",
        f"no pre/post scripts configured; file systems frozen (QEMU guest agent: {mount})",
    )
    assert q.to_dict()["freeze_detail"] == f"QEMU guest agent: {mount}"


def test_application_level_with_scripts_says_guest_agent(
    agent: Agent, mount: Path, tmp_path: Path
) -> None:
    cfg = ScriptConfig.from_dict(
        {
            "preScriptLocation": script(tmp_path, "pre.sh", "true"),
            "postScriptLocation": script(tmp_path, "post.sh", "true"),
        }
    )
    with quiesce(cfg, GuestAgentFreezer(agent.socket, [str(mount)]), vm_running=True) as q:
        blocked(mount)
    assert q.consistency == Consistency(
        "application",
        f"pre- and post-script succeeded; file systems frozen (QEMU guest agent: {mount})",
    )
    assert writable(mount) and agent.status() == "thawed"


def test_body_raising_still_thaws(agent: Agent, mount: Path, tmp_path: Path) -> None:
    marker = tmp_path / "post-ran"
    cfg = ScriptConfig.from_dict(
        {"postScriptLocation": script(tmp_path, "post.sh", f"touch {marker}")}
    )
    with (
        pytest.raises(OSError, match="disk vanished"),
        quiesce(cfg, GuestAgentFreezer(agent.socket, [str(mount)]), vm_running=True),
    ):
        blocked(mount)
        raise OSError("disk vanished")
    assert writable(mount) and agent.status() == "thawed"
    assert marker.exists()


def test_sigterm_while_frozen_thaws(agent: Agent, mount: Path) -> None:
    child_code = (
        "import sys, time\n"
        "from vmvault.consistency import GuestAgentFreezer, quiesce\n"
        "with quiesce(None, GuestAgentFreezer(sys.argv[1], [sys.argv[2]]), vm_running=True):\n"
        "    print('frozen', flush=True)\n"
        "    time.sleep(30)\n"
    )
    sigterm_while_frozen(child_code, agent.socket, str(mount), mnt=mount)
    assert writable(mount) and agent.status() == "thawed"


def test_thaw_goes_through_a_restarted_agent(agent: Agent, mount: Path) -> None:
    """The agent dies while the guest is frozen and comes back: the thaw reconnects."""
    freezer = GuestAgentFreezer(agent.socket, [str(mount)])
    assert freezer.freeze() == f"QEMU guest agent: {mount}"
    agent.kill()
    writer = blocked(mount)  # the freeze outlives the agent
    agent.start()  # it finds its "frozen" state file and accepts a thaw
    freezer.thaw()
    assert writer.wait(timeout=5) == 0
    assert agent.status() == "thawed"
    freezer.thaw()  # a second thaw does nothing


def test_a_half_written_request_of_an_earlier_client_is_skipped(agent: Agent) -> None:
    with socket.socket(socket.AF_UNIX) as earlier:
        earlier.connect(agent.socket)
        earlier.sendall(b'{"execute": "guest-fsfreeze-st')
    assert agent.status() == "thawed"


# ---------------------------------------------------------------------------- failures


def test_path_that_is_not_a_mount_is_refused_and_nothing_stays_frozen(
    agent: Agent, mount: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    freezer = GuestAgentFreezer(agent.socket, [str(mount), str(plain)])
    with pytest.raises(GuestAgentError) as err:
        freezer.freeze()
    assert err.value.code == "FsFreezeFailed"
    assert "froze 1 of 2 file systems" in err.value.message
    assert agent.socket in err.value.message
    assert writable(mount) and agent.status() == "thawed"  # the mount frozen first: thawed

    with quiesce(None, GuestAgentFreezer(agent.socket, [str(plain)]), vm_running=True) as q:
        assert writable(mount)
    assert q.freeze == "failed" and q.consistency.level == "crash"
    assert q.consistency.reason.startswith(
        f"no pre/post scripts configured; file-system freeze failed: "
        f"QEMU guest agent {agent.socket}: froze 0 of 1 file systems"
    )


def test_failed_pre_script_with_guest_agent_freeze_is_file_system_level(
    agent: Agent, mount: Path, tmp_path: Path
) -> None:
    cfg = ScriptConfig.from_dict({"preScriptLocation": script(tmp_path, "pre.sh", "exit 4")})
    with quiesce(cfg, GuestAgentFreezer(agent.socket, [str(mount)]), vm_running=True) as q:
        blocked(mount)
    assert q.consistency.level == "file-system"
    assert "exit code 4; continueBackupOnFailure=true" in q.consistency.reason
    assert q.consistency.reason.endswith(f"file systems frozen (QEMU guest agent: {mount})")


def test_unreachable_agent_gives_a_named_error_and_crash_level(tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.sock")
    with pytest.raises(GuestAgentError) as err:
        GuestAgentFreezer(absent, ["/srv"]).freeze()
    assert err.value.code == "GuestAgentUnreachable"
    cannot = f"QEMU guest agent {absent}: cannot connect: No such file or directory"
    assert err.value.message == cannot

    with quiesce(None, GuestAgentFreezer(absent, ["/srv"]), vm_running=True) as q:
        pass
    assert q.freeze == "failed"
    assert q.consistency == Consistency(
        "crash",
        f"no pre/post scripts configured; file-system freeze failed: {cannot}",
    )


def test_an_agent_that_does_not_answer_times_out(agent: Agent, mount: Path) -> None:
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)  # alive, connectable (backlog), silent
    try:
        t0 = time.monotonic()
        with pytest.raises(GuestAgentError) as err:
            GuestAgentFreezer(agent.socket, [str(mount)], timeout=1).freeze()
        assert time.monotonic() - t0 < 5
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    assert err.value.code == "GuestAgentUnreachable"
    assert "no answer to guest-sync-delimited within 1 s" in err.value.message
    assert writable(mount)


def test_a_second_client_waits_for_the_first(agent: Agent) -> None:
    first = GuestAgent(agent.socket)
    with pytest.raises(GuestAgentError) as err:
        GuestAgent(agent.socket, timeout=1)
    assert "is another client connected?" in err.value.message
    threading.Timer(0.5, first.close).start()
    second = GuestAgent(agent.socket, timeout=10)
    assert second.execute("guest-fsfreeze-status") == "thawed"
    second.close()


def test_an_agent_refusing_the_freeze_is_reported_with_its_message(agent: Agent) -> None:
    # No mount point named: guest-fsfreeze-freeze, which this agent has disabled.
    freezer = GuestAgentFreezer(agent.socket)
    with pytest.raises(GuestAgentError) as err:
        freezer.freeze()
    assert err.value.code == "FsFreezeFailed"
    assert "guest-fsfreeze-freeze failed: Command guest-fsfreeze-freeze has been disabled" in (
        err.value.message
    )
    assert agent.status() == "thawed"


def test_a_guest_frozen_by_someone_else_is_left_to_them(agent: Agent, mount: Path) -> None:
    other = GuestAgent(agent.socket)
    assert other.execute("guest-fsfreeze-freeze-list", {"mountpoints": [str(mount)]}) == 1
    other.close()
    freezer = GuestAgentFreezer(agent.socket, [str(mount)])
    with pytest.raises(GuestAgentError) as err:
        freezer.freeze()
    assert "already frozen" in err.value.message and err.value.code == "FsFreezeFailed"
    assert agent.status() == "frozen"  # not ours: not thawed behind their back
    blocked(mount)
    freezer.thaw()  # nothing of ours to thaw
    assert agent.status() == "frozen"


def test_guest_mount_points_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="not an absolute path"):
        GuestAgentFreezer("/run/x.sock", ["srv"])


# ---------------------------------------------------------------------------- inventory


def _inventory(tmp_path: Path, extra: str) -> str:
    disk = tmp_path / "os.img"
    with open(disk, "wb") as fh:
        fh.truncate(4 << 20)
        fh.write(os.urandom(1 << 20))
    return f"""
[[vms]]
name = "app01"
state = "running"
snapshot = "copy"
{extra}
  [[vms.disks]]
  name = "os"
  path = "{disk}"
  role = "os"
"""


def test_vm_backup_freezes_through_the_guest_agent(
    agent: Agent, mount: Path, tmp_path: Path, ctx: Context
) -> None:
    extra = f'guest_agent = "{agent.socket}"\nfreeze = ["{mount}"]'
    inv = parse_inventory(_inventory(tmp_path, extra), "inv.toml")
    point = run_vm_backup(ctx, inv, "app01")
    reason = f"no pre/post scripts configured; file systems frozen (QEMU guest agent: {mount})"
    assert point["consistency"] == {"level": "file-system", "reason": reason}
    assert point["meta"]["quiesce"]["freeze"] == "frozen"
    assert writable(mount) and agent.status() == "thawed"


def test_vm_backup_with_an_unreachable_agent_is_crash_consistent(
    tmp_path: Path, ctx: Context
) -> None:
    absent = tmp_path / "absent.sock"
    inv = parse_inventory(_inventory(tmp_path, f'guest_agent = "{absent}"'), "inv.toml")
    point = run_vm_backup(ctx, inv, "app01")
    assert point["consistency"]["level"] == "crash"
    reason = point["consistency"]["reason"]
    assert f"file-system freeze failed: QEMU guest agent {absent}: cannot connect" in reason


def test_inventory_refuses_relative_guest_mount_points(tmp_path: Path) -> None:
    text = _inventory(tmp_path, 'guest_agent = "/run/qga.sock"\nfreeze = ["srv/data"]')
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "inv.toml")
    assert err.value.message == (
        "inv.toml: vms['app01']: freeze: guest mount points must be absolute paths: srv/data"
    )
