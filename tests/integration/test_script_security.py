"""Pre- and post-scripts run as root: nobody else may get code run through them.

The tests run as root; "another user" is uid 65534 (nobody) owning a folder, or a folder
writable by others. Markers written by the scripts show what ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli
from vmvault.app.context import Context
from vmvault.app.points import list_points
from vmvault.consistency import ConsistencyError, NoFreezer, ScriptConfig, quiesce
from vmvault.consistency.scripts import check_script, run_script

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")
NOBODY = 65534


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o700)
    return path


def _folder(tmp_path: Path, name: str = "scripts", mode: int = 0o755) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    folder.chmod(mode)
    return folder


def test_a_script_in_a_folder_another_user_owns_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    marker = tmp_path / "ran"
    script = _script(folder / "pre.sh", f"touch {marker}")
    assert run_script("pre", str(script), timeout=5, poll=0.2).ok  # a root folder: runs
    marker.unlink()
    os.chown(folder, NOBODY, NOBODY)  # its owner could `mv evil.sh pre.sh` at any time
    result = run_script("pre", str(script), timeout=5, poll=0.2)
    assert not result.ok and result.code == "InsufficientPermissionforPre-Script"
    assert "belongs to uid 65534" in result.message and str(folder) in result.message
    assert not marker.exists()


def test_a_script_in_a_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, mode=0o777)
    marker = tmp_path / "ran"
    script = _script(folder / "pre.sh", f"touch {marker}")
    result = run_script("pre", str(script), timeout=5, poll=0.2)
    assert not result.ok and "writable by others" in result.message
    assert not marker.exists()
    folder.chmod(0o1777)  # sticky, like /tmp: others cannot rename root's files in it
    assert run_script("pre", str(script), timeout=5, poll=0.2).ok


def test_each_attempt_is_checked_again(tmp_path: Path) -> None:
    """The swap between two tries: what runs the second time is checked again."""
    folder = _folder(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    # The first attempt fails and, as any writer of the folder could, replaces the script
    # with one that is not root's own 0700 file; the retry must not run it.
    evil = folder / "evil.sh"
    _script(evil, f"touch {second}")
    evil.chmod(0o755)
    script = _script(
        folder / "pre.sh",
        f"touch {first}\nmv {evil} {folder / 'pre.sh'}\nexit 1",
    )
    result = run_script("pre", str(script), retries=2, timeout=5, poll=0.2)
    assert first.exists() and not second.exists()
    assert not result.ok and result.code == "InsufficientPermissionforPre-Script"
    assert "before attempt 2" in result.message and result.attempts == 1


def test_the_checked_file_is_the_one_that_runs(tmp_path: Path) -> None:
    """The interpreter is handed the opened descriptor, not the path looked up again."""
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    script = _script(folder / "pre.sh", f'echo "$0" > {out}; echo "$VMVAULT_SCRIPT" >> {out}')
    assert run_script("pre", str(script), timeout=5, poll=0.2).ok
    zero, path = out.read_text().splitlines()
    assert zero.startswith("/proc/self/fd/") and path == str(script)


def test_symlinks_are_resolved_and_their_targets_checked(tmp_path: Path) -> None:
    safe = _folder(tmp_path, "safe")
    unsafe = _folder(tmp_path, "unsafe")
    os.chown(unsafe, NOBODY, NOBODY)
    marker = tmp_path / "ran"
    target = _script(unsafe / "real.sh", f"touch {marker}")
    link = safe / "pre.sh"
    link.symlink_to(target)  # a trusted name pointing into another user's folder
    result = run_script("pre", str(link), timeout=5, poll=0.2)
    assert not result.ok and "belongs to uid 65534" in result.message
    assert not marker.exists()
    root_target = _script(safe / "real.sh", f"touch {marker}")
    link.unlink()
    link.symlink_to(root_target)
    assert check_script("pre", str(link)) is None
    assert run_script("pre", str(link), timeout=5, poll=0.2).ok and marker.exists()


def test_a_script_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    script = _script(folder / "pre.sh", "true")
    os.chown(script, NOBODY, NOBODY)
    result = run_script("pre", str(script), timeout=5, poll=0.2)
    assert not result.ok and "found uid 65534" in result.message


def test_a_setsid_grandchild_of_a_timed_out_script_is_killed(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    pid_file = tmp_path / "grandchild.pid"
    script = _script(
        folder / "pre.sh",
        f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 1000' &\nsleep 1000",
    )
    result = run_script("pre", str(script), timeout=1, poll=0.2)
    assert result.code == "Pre-ScriptTimeout"
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{grandchild}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(grandchild, 9)
        pytest.fail("the setsid grandchild survived the script's timeout")


def _gone_within(pid: int, seconds: float) -> bool:
    """Whether ``pid`` ended (gone, or a zombie nobody reaped) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_a_daemonized_grandchild_of_a_timed_out_script_is_killed(tmp_path: Path) -> None:
    """The classic daemon: setsid, fork, and the middle process exits. The grandchild is
    then nobody's descendant in /proc (it was handed to init) and in no group of ours."""
    folder = _folder(tmp_path)
    pid_file = tmp_path / "daemon.pid"
    script = _script(
        folder / "pre.sh",
        f"setsid sh -c 'sleep 1000 & echo $! > {pid_file}' &\nwait\nsleep 1000",
    )
    result = run_script("pre", str(script), timeout=1, poll=0.2)
    assert result.code == "Pre-ScriptTimeout"
    daemon = int(pid_file.read_text())
    if not _gone_within(daemon, 5):
        os.kill(daemon, 9)
        pytest.fail("the daemonized grandchild survived the script's timeout")


def test_a_symlink_in_a_folder_another_user_owns_is_refused(tmp_path: Path) -> None:
    """The configured name is a symlink in another user's folder: its owner can point it at
    any root-owned 0700 file, so the folder holding the link must be safe too."""
    safe = _folder(tmp_path, "safe")
    marker = tmp_path / "ran"
    target = _script(safe / "real.sh", f"touch {marker}")
    theirs = _folder(tmp_path, "theirs")
    link = theirs / "pre.sh"
    link.symlink_to(target)
    assert run_script("pre", str(link), timeout=5, poll=0.2).ok  # root's folder: followed
    marker.unlink()
    os.chown(theirs, NOBODY, NOBODY)
    result = run_script("pre", str(link), timeout=5, poll=0.2)
    assert not result.ok and result.code == "InsufficientPermissionforPre-Script"
    assert "belongs to uid 65534" in result.message and str(theirs) in result.message
    assert not marker.exists()


def test_a_symlinked_folder_in_a_folder_another_user_owns_is_refused(tmp_path: Path) -> None:
    safe = _folder(tmp_path, "safe")
    marker = tmp_path / "ran"
    _script(safe / "pre.sh", f"touch {marker}")
    theirs = _folder(tmp_path, "theirs")
    (theirs / "scripts").symlink_to(safe)
    os.chown(theirs, NOBODY, NOBODY)
    result = run_script("pre", str(theirs / "scripts" / "pre.sh"), timeout=5, poll=0.2)
    assert not result.ok and "belongs to uid 65534" in result.message
    assert not marker.exists()


def test_another_users_symlink_in_a_sticky_folder_is_refused(tmp_path: Path) -> None:
    """In a sticky folder (like /tmp) the owner of a link may still replace it."""
    sticky = _folder(tmp_path, "shared", mode=0o1777)
    safe = _folder(tmp_path, "safe")
    marker = tmp_path / "ran"
    target = _script(safe / "real.sh", f"touch {marker}")
    link = sticky / "pre.sh"
    link.symlink_to(target)
    assert run_script("pre", str(link), timeout=5, poll=0.2).ok  # root's own link: fine
    marker.unlink()
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    result = run_script("pre", str(link), timeout=5, poll=0.2)
    assert not result.ok and "symlink" in result.message and "uid 65534" in result.message
    assert not marker.exists()


def test_relative_symlinks_are_walked_as_the_kernel_does(tmp_path: Path) -> None:
    """ "../x" in a link's target goes up from the folder holding the link, and the
    folders it reaches are checked like any other."""
    safe, theirs = _folder(tmp_path, "safe"), _folder(tmp_path, "theirs")
    marker = tmp_path / "ran"
    _script(theirs / "real.sh", f"touch {marker}")
    (safe / "pre.sh").symlink_to("../theirs/./real.sh")
    assert run_script("pre", str(safe / "pre.sh"), timeout=5, poll=0.2).ok
    marker.unlink()
    os.chown(theirs, NOBODY, NOBODY)
    result = run_script("pre", str(safe / "pre.sh"), timeout=5, poll=0.2)
    assert not result.ok and f"folder {theirs}/ belongs to uid 65534" in result.message
    assert not marker.exists()


def test_a_symlink_loop_is_refused_not_followed_forever(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "a").symlink_to("b")
    (folder / "b").symlink_to("a")
    result = run_script("pre", str(folder / "a"), timeout=5, poll=0.2)
    assert result.code == "Pre-ScriptNotFound" and "too many levels of symbolic links" in (
        result.message
    )


# ---------------------------------------------------------------------------- the attack


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is root's 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="vmvault-attack-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_real_attacker_swapping_the_script_between_tries_gets_nothing_run_as_root(
    shared_tmp: Path,
) -> None:
    """Issue 11's attack, literally: uid 65534 owns the scripts folder and, once the first
    try has run, does `mv evil.sh pre.sh` so that the retry runs its own file as root."""
    folder, markers = shared_tmp / "scripts", shared_tmp / "markers"
    folder.mkdir()
    markers.mkdir(mode=0o777)
    markers.chmod(0o777)  # the attacker may write nothing but its markers here
    evil_ran, first_ran = markers / "evil-ran", markers / "first-ran"
    evil = folder / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {evil_ran}\n")
    evil.chmod(0o755)
    # The first try waits (bounded) for the swap, so that the race is won every time.
    _script(
        folder / "pre.sh",
        f"touch {first_ran}\nfor i in $(seq 50); do [ -e {evil} ] || break; sleep 0.1; done\n"
        "exit 1",
    )
    for path in (folder, evil):
        os.chown(path, NOBODY, NOBODY)
    attacker = subprocess.Popen(
        [
            "sh",
            "-c",
            f"for i in $(seq 100); do [ -e {first_ran} ] && exec mv {evil} {folder}/pre.sh;"
            " sleep 0.05; done",
        ],
        user=NOBODY,
        group=NOBODY,
    )
    try:
        result = run_script("pre", str(folder / "pre.sh"), retries=2, timeout=10, poll=0.2)
    finally:
        attacker.kill()
        attacker.wait()
    if evil_ran.exists():
        pytest.fail(f"the attacker's script ran as uid {evil_ran.stat().st_uid}")
    assert not result.ok and result.code == "InsufficientPermissionforPre-Script"
    assert not first_ran.exists()  # refused before the first try: the folder is theirs
    assert f"folder {folder}/ belongs to uid 65534" in result.message


# ---------------------------------------------------------------------------- what it costs


def test_a_refused_pre_script_is_no_application_consistent_point(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    marker = tmp_path / "ran"
    pre = _script(folder / "pre.sh", f"touch {marker}")
    os.chown(folder, NOBODY, NOBODY)
    cfg = ScriptConfig(pre_script_location=str(pre))
    with quiesce(cfg, NoFreezer(), vm_running=True) as q:
        pass
    assert q.consistency.level == "crash" and not marker.exists()
    assert q.scripts[0].code == "InsufficientPermissionforPre-Script"
    assert f"folder {folder}/ belongs to uid 65534" in q.consistency.reason
    strict = ScriptConfig(pre_script_location=str(pre), continue_backup_on_failure=False)
    with pytest.raises(ConsistencyError) as err, quiesce(strict, NoFreezer(), vm_running=True):
        pytest.fail("the snapshot step must not run")
    assert err.value.code == "InsufficientPermissionforPre-Script"
    assert str(folder) in err.value.message and "belongs to uid 65534" in err.value.message


def _running_vm(tmp_path: Path, scripts: Path) -> Path:
    """An inventory with one running two-disk VM (raw files) using ``scripts``."""
    disks = []
    for name in ("os", "data"):
        disk = tmp_path / f"{name}.img"
        with open(disk, "wb") as fh:
            fh.truncate(4 << 20)
            fh.write(os.urandom(1 << 20))
        disks.append(f'  [[vms.disks]]\n  name = "{name}"\n  path = "{disk}"\n  pool = "p"\n')
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        "[pools.p]\negress_mb_per_s = 200\n\n[[vms]]\n"
        f'name = "web01"\nstate = "running"\nsnapshot = "copy"\nscripts = "{scripts}"\n'
        + "".join(disks)
    )
    return inventory


def test_vm_backup_with_a_refused_pre_script_fails_in_one_line_or_is_not_application(
    tmp_path: Path, ctx: Context
) -> None:
    folder = _folder(tmp_path)
    marker = tmp_path / "ran"
    pre = _script(folder / "pre.sh", f"touch {marker}")
    os.chown(folder, NOBODY, NOBODY)
    config = tmp_path / "scripts.json"
    env = {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_INVENTORY": str(_running_vm(tmp_path, config)),
    }
    for continue_on_failure in (False, True):
        config.write_text(
            json.dumps(
                {"preScriptLocation": str(pre), "continueBackupOnFailure": continue_on_failure}
            )
        )
        config.chmod(0o600)
        done = run_cli("vm", "backup", "web01", env=env)
        if not continue_on_failure:
            assert done.returncode != 0, done.stdout
            (line,) = done.stderr.strip().splitlines()
            assert line.startswith("error: ") and "Traceback" not in done.stderr
            assert f"{folder}/ belongs to uid 65534" in line
            assert list_points(ctx).points == []
    assert done.returncode == 0, done.stderr
    (point,) = list_points(ctx).points
    assert point["consistency"]["level"] != "application"
    assert "belongs to uid 65534" in point["consistency"]["reason"]
    assert not marker.exists()


# ---------------------------------------------------------------------------- the runner


def test_a_script_that_cannot_be_executed_could_not_be_started(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    no_interpreter = folder / "pre.sh"
    no_interpreter.write_text("echo no '#!' line\n")
    no_interpreter.chmod(0o700)
    result = run_script("pre", str(no_interpreter), timeout=5, poll=0.2)
    assert result.code == "Pre-ScriptExecutionFailed" and result.exit_code is None
    assert result.message.endswith("could not be started: Exec format error")


def test_a_script_killed_by_a_signal_says_which(tmp_path: Path) -> None:
    script = _script(_folder(tmp_path) / "pre.sh", "kill -KILL $$")
    result = run_script("pre", str(script), timeout=5, poll=0.2)
    assert result.exit_code == -9 and "failed with exit code -9" in result.message


def test_the_script_gets_vmvaults_environment_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor is a Python interpreter, which would add LC_CTYPE=C.UTF-8 under the
    C locale: the script's environment must still be exactly ours (plus VMVAULT_SCRIPT)."""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VMVAULT_TEST_SETTING", "two words; $HOME")
    out = tmp_path / "env"
    script = _script(_folder(tmp_path) / "pre.sh", f"env > {out}")
    assert run_script("pre", str(script), timeout=5, poll=0.2).ok
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert seen["VMVAULT_TEST_SETTING"] == "two words; $HOME"
    assert seen["VMVAULT_SCRIPT"] == str(script)
    assert "LC_CTYPE" not in seen and "PWD" in seen


def test_a_killed_supervisor_is_reported_and_the_scripts_group_ended(tmp_path: Path) -> None:
    """Someone SIGKILLs the process supervising the script: no hang, one message, and the
    script's process group does not outlive it."""
    folder = _folder(tmp_path)
    parent_file, child_file = tmp_path / "supervisor.pid", tmp_path / "child.pid"
    script = _script(
        folder / "pre.sh", f"sleep 1000 &\necho $! > {child_file}\necho $PPID > {parent_file}\nwait"
    )

    def kill_supervisor() -> None:
        for _ in range(100):
            if parent_file.exists() and parent_file.read_text().strip():
                os.kill(int(parent_file.read_text()), 9)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_supervisor)
    killer.start()
    result = run_script("pre", str(script), timeout=20, poll=0.2)
    killer.join()
    assert result.code == "Pre-ScriptExecutionFailed" and result.seconds < 10
    assert "was lost: the process supervising it ended with status -9" in result.message
    child = int(child_file.read_text())
    if not _gone_within(child, 5):
        os.kill(child, 9)
        pytest.fail("the script's child outlived its killed supervisor")
