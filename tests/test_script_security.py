"""Pre- and post-scripts run as root: nobody else may get code run through them.

The tests run as root; "another user" is uid 65534 (nobody) owning a folder, or a folder
writable by others. Markers written by the scripts show what ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

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
