"""Consistency framework: Azure-style pre/post scripts, fsfreeze, and the level reached.

Real processes and a real (loop-mounted ext4) file system; no mocks. The tests run as
root, which is what makes root-owned scripts and configs possible to create here.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.freezekit import blocked, reap_writers, sigterm_while_frozen, unfreeze, writable
from vmvault.consistency import (
    STOPPED_REASON,
    Consistency,
    ConsistencyError,
    FreezeError,
    FsFreezer,
    NoFreezer,
    ScriptConfig,
    ScriptConfigError,
    ScriptResult,
    decide_level,
    load_script_config,
    quiesce,
    run_script,
)
from vmvault.consistency.level import FreezeState
from vmvault.consistency.scripts import Phase

IS_ROOT = os.geteuid() == 0
# The checks of ownership, mounts and fsfreeze need root: the suite runs as root (make test).
assert IS_ROOT, "tests/test_consistency.py needs root (script ownership, mount, fsfreeze)"


# ---------------------------------------------------------------------------- helpers


def script(tmp_path: Path, name: str, body: str, mode: int = 0o700) -> Path:
    """A /bin/sh script in tmp_path with the given mode (owned by root: tests run as root)."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def config(**fields: Any) -> ScriptConfig:
    """A ScriptConfig from Azure's JSON field names (paths given as Path are fine)."""
    return ScriptConfig.from_dict(
        {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}
    )


def write_config(tmp_path: Path, data: Any, mode: int = 0o600, raw: str | None = None) -> Path:
    path = tmp_path / "VMSnapshotScriptPluginConfig.json"
    path.write_text(raw if raw is not None else json.dumps(data))
    path.chmod(mode)
    return path


def gone(pid: int) -> bool:
    """True if the process no longer runs (a zombie left for an absent reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in (b"Z", b"X")


def ok_result(phase: Phase = "pre") -> ScriptResult:
    return ScriptResult(True, "ok", f"{phase}-script /s succeeded", 1, 0.1, 0, phase)


def failed_result(phase: Phase = "pre") -> ScriptResult:
    p = phase.capitalize()
    return ScriptResult(
        False,
        f"{p}-ScriptExecutionFailed",
        f"{phase}-script /s failed with exit code 3: boom",
        1,
        0.1,
        3,
        phase,
    )


# ---------------------------------------------------------------------------- config


def test_defaults_match_azure() -> None:
    cfg = ScriptConfig.from_dict({})
    assert cfg.plugin_name == "ScriptRunner"
    assert cfg.pre_script_location is None and cfg.post_script_location is None
    assert cfg.pre_script_params == [] and cfg.post_script_params == []
    assert cfg.pre_script_no_of_retries == 0 and cfg.post_script_no_of_retries == 0
    assert cfg.timeout_in_seconds == 30
    assert cfg.continue_backup_on_failure is True
    assert cfg.fs_freeze_enabled is True
    assert cfg.scripts_execution_poll_time_seconds == 3


def test_loads_azure_template_with_json_names(tmp_path: Path) -> None:
    template = {
        "pluginName": "ScriptRunner",
        "preScriptLocation": "/opt/app/pre.sh",
        "postScriptLocation": "",
        "preScriptParams": ["", "--flush"],
        "postScriptParams": ["", ""],
        "preScriptNoOfRetries": 2,
        "postScriptNoOfRetries": 1,
        "timeoutInSeconds": 1800,
        "continueBackupOnFailure": False,
        "fsFreezeEnabled": False,
        "ScriptsExecutionPollTimeSeconds": 5,
    }
    cfg = load_script_config(write_config(tmp_path, template))
    assert cfg.pre_script_location == "/opt/app/pre.sh"
    assert cfg.post_script_location is None  # "" means no script, as in Azure's template
    assert cfg.pre_script_params == ["--flush"] and cfg.post_script_params == []
    assert (cfg.pre_script_no_of_retries, cfg.post_script_no_of_retries) == (2, 1)
    assert cfg.timeout_in_seconds == 1800
    assert cfg.continue_backup_on_failure is False and cfg.fs_freeze_enabled is False
    assert cfg.scripts_execution_poll_time_seconds == 5
    assert cfg.to_dict()["preScriptLocation"] == "/opt/app/pre.sh"
    assert ScriptConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"timeoutInSeconds": 1801}, "timeoutInSeconds"),
        ({"timeoutInSeconds": 0}, "timeoutInSeconds"),
        ({"timeoutInSeconds": "30"}, "timeoutInSeconds"),
        ({"ScriptsExecutionPollTimeSeconds": 6}, "ScriptsExecutionPollTimeSeconds"),
        ({"preScriptNoOfRetries": -1}, "preScriptNoOfRetries"),
        ({"continueBackupOnFailure": "yes"}, "continueBackupOnFailure"),
        ({"fsFreezeEnabled": 1}, "fsFreezeEnabled"),
        ({"preScriptParams": "a b"}, "preScriptParams"),
        ({"preScriptLocation": "relative/pre.sh"}, "preScriptLocation"),
        ({"pluginName": "Other"}, "pluginName"),
        ({"timeoutInSecond": 10}, "timeoutInSecond"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ScriptConfigError) as err:
        ScriptConfig.from_dict(fields, source="vm1 scripts")
    assert err.value.code == "IncorrectJSONConfigFile"
    assert f"vm1 scripts: {field}:" in err.value.message
    assert "\n" not in err.value.message


def test_config_file_with_mode_0644_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, {}, mode=0o644)
    with pytest.raises(ScriptConfigError) as err:
        load_script_config(path)
    assert err.value.code == "InsufficientPermissionforConfig"
    assert str(path) in err.value.message and "0644" in err.value.message


def test_config_file_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, {})
    os.chown(path, 1000, 1000)
    with pytest.raises(ScriptConfigError) as err:
        load_script_config(path)
    assert err.value.code == "InsufficientPermissionforConfig"
    assert "uid 1000" in err.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ScriptConfigError) as err:
        load_script_config(tmp_path / "absent.json")
    assert err.value.code == "IncorrectJSONConfigFile" and "not found" in err.value.message


def test_malformed_json_is_refused(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, None, raw='{\n  "timeoutInSeconds": 30,\n  "fsFreezeEnabled": tru\n}'
    )
    with pytest.raises(ScriptConfigError) as err:
        load_script_config(path)
    assert err.value.code == "IncorrectJSONConfigFile"
    assert str(path) in err.value.message and "line 3" in err.value.message


def test_wrong_type_in_file_names_the_field(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"timeoutInSeconds": "sixty"})
    with pytest.raises(ScriptConfigError) as err:
        load_script_config(path)
    assert err.value.code == "IncorrectJSONConfigFile"
    assert "timeoutInSeconds" in err.value.message and "'sixty'" in err.value.message
    assert "\n" not in err.value.message


# ---------------------------------------------------------------------------- scripts


def test_script_succeeds_with_params_passed_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "args"
    pre = script(tmp_path, "pre.sh", f'for a in "$@"; do echo "[$a]"; done > {out}')
    result = run_script("pre", str(pre), ["two words", "$HOME", ";", ""], timeout=5, poll=1)
    assert result.ok and result.code == "ok" and result.exit_code == 0
    assert result.attempts == 1
    assert out.read_text().splitlines() == ["[two words]", "[$HOME]", "[;]", "[]"]


def test_script_failure_reports_exit_code_and_last_stderr_line(tmp_path: Path) -> None:
    pre = script(tmp_path, "pre.sh", "echo starting >&2\necho 'database lock refused' >&2\nexit 3")
    result = run_script("pre", str(pre), timeout=5, poll=1)
    assert not result.ok
    assert result.code == "Pre-ScriptExecutionFailed"
    assert result.exit_code == 3
    assert "exit code 3" in result.message and "database lock refused" in result.message
    assert "starting" not in result.message


def test_hanging_script_is_killed_with_its_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    pre = script(tmp_path, "pre.sh", f"sleep 60 &\necho $! > {pidfile}\nwait")
    t0 = time.monotonic()
    result = run_script("pre", str(pre), timeout=1, poll=1)
    assert time.monotonic() - t0 < 4
    assert not result.ok and result.code == "Pre-ScriptTimeout"
    assert "timed out after 1 s" in result.message and result.exit_code is None
    assert gone(int(pidfile.read_text()))


def test_script_ignoring_sigterm_gets_sigkill(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    post = script(tmp_path, "post.sh", f"trap '' TERM\nsleep 60 &\necho $! > {pidfile}\nwait")
    result = run_script("post", str(post), timeout=1, poll=1)
    assert result.code == "Post-ScriptTimeout"
    assert 2.5 < result.seconds < 6  # 1 s timeout + 2 s grace before SIGKILL
    assert gone(int(pidfile.read_text()))


def test_timeout_comes_from_the_config(tmp_path: Path) -> None:
    pre = script(tmp_path, "pre.sh", "exec sleep 60")
    cfg = config(preScriptLocation=pre, timeoutInSeconds=1, ScriptsExecutionPollTimeSeconds=1)
    with quiesce(cfg, NoFreezer(), vm_running=True) as q:
        pass
    assert q.scripts[0].code == "Pre-ScriptTimeout"
    assert "timed out after 1 s" in q.consistency.reason
    assert "continueBackupOnFailure=true" in q.consistency.reason


def test_retry_after_a_failed_first_attempt(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    body = f"echo x >> {counter}\n[ $(wc -l < {counter}) -ge 2 ] || {{ echo first >&2; exit 1; }}"
    pre = script(tmp_path, "pre.sh", body)
    result = run_script("pre", str(pre), retries=1, timeout=5, poll=1)
    assert result.ok and result.attempts == 2
    assert len(counter.read_text().splitlines()) == 2

    counter.unlink()
    result = run_script("pre", str(pre), retries=0, timeout=5, poll=1)
    assert not result.ok and result.attempts == 1  # 0 retries = one try


def test_retries_are_extra_attempts(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    post = script(tmp_path, "post.sh", f"echo x >> {counter}\nexit 7")
    cfg = config(postScriptLocation=post, postScriptNoOfRetries=2)
    with quiesce(cfg, NoFreezer(), vm_running=True) as q:
        pass
    (post_result,) = q.scripts
    assert post_result.attempts == 3 and post_result.exit_code == 7
    assert len(counter.read_text().splitlines()) == 3
    assert "3 attempts" in post_result.message


def test_missing_script(tmp_path: Path) -> None:
    pre = run_script("pre", str(tmp_path / "nope.sh"))
    post = run_script("post", str(tmp_path / "nope.sh"))
    assert (pre.code, post.code) == ("Pre-ScriptNotFound", "Post-ScriptNotFound")
    assert pre.attempts == 0 and "not found" in pre.message


@pytest.mark.parametrize("mode", [0o755, 0o777, 0o750, 0o500, 0o4700])
def test_script_mode_must_be_exactly_0700(tmp_path: Path, mode: int) -> None:
    marker = tmp_path / "ran"
    pre = script(tmp_path, "pre.sh", f"touch {marker}")
    pre.chmod(mode)
    result = run_script("pre", str(pre), timeout=5)
    assert result.code == "InsufficientPermissionforPre-Script"
    assert f"{mode:04o}" in result.message
    assert not marker.exists()


def test_script_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    post = script(tmp_path, "post.sh", "true")
    os.chown(post, 1000, 0)
    result = run_script("post", str(post))
    assert result.code == "InsufficientPermissionforPost-Script" and "uid 1000" in result.message


# ---------------------------------------------------------------------------- level table


def test_decide_level_examples() -> None:
    ok, fail = ok_result("pre"), failed_result("pre")
    post_ok, post_fail = ok_result("post"), failed_result("post")

    assert decide_level(vm_running=False, pre=ok, post=post_ok, freeze="frozen") == Consistency(
        "crash", STOPPED_REASON
    )
    c = decide_level(vm_running=True, pre=ok, post=post_ok, freeze="frozen")
    assert c == Consistency("application", "pre- and post-script succeeded; file systems frozen")
    assert decide_level(vm_running=True, pre=ok, post=None, freeze="disabled").level == (
        "application"
    )
    assert decide_level(vm_running=True, pre=ok, post=post_ok, freeze="unavailable").level == (
        "application"
    )
    assert decide_level(vm_running=True, pre=ok, post=post_ok, freeze="failed").level == "crash"
    assert decide_level(vm_running=True, pre=ok, post=post_fail, freeze="frozen").level == (
        "file-system"
    )
    c = decide_level(vm_running=True, freeze="frozen")
    assert c == Consistency("file-system", "no pre/post scripts configured; file systems frozen")
    c = decide_level(vm_running=True, pre=fail, post=post_ok, freeze="frozen")
    assert c.level == "file-system"
    assert c.reason.startswith(fail.message + "; continueBackupOnFailure=true")
    assert decide_level(vm_running=True, post=post_ok, freeze="frozen").level == "file-system"
    c = decide_level(vm_running=True, freeze="disabled")
    assert c.level == "crash" and "nothing could be quiesced" in c.reason
    c = decide_level(vm_running=True, pre=fail, freeze="failed", freeze_detail="EBUSY")
    assert c.level == "crash" and "file-system freeze failed: EBUSY" in c.reason
    c = decide_level(
        vm_running=True, pre=fail, freeze="skipped", continue_on_failure=False, single_disk=True
    )
    assert c.level == "crash" and "fell back to crash-consistent" in c.reason
    assert c.to_dict() == {"level": "crash", "reason": c.reason}


def test_decide_level_over_all_combinations() -> None:
    scripts: list[ScriptResult | None] = [None, ok_result(), failed_result()]
    posts: list[ScriptResult | None] = [None, ok_result("post"), failed_result("post")]
    freezes: list[FreezeState] = ["frozen", "disabled", "unavailable", "failed", "skipped"]
    seen = set()
    for running, pre, post, freeze, cont, single in itertools.product(
        [True, False], scripts, posts, freezes, [True, False], [True, False]
    ):
        c = decide_level(
            vm_running=running,
            pre=pre,
            post=post,
            freeze=freeze,
            freeze_detail="x",
            continue_on_failure=cont,
            single_disk=single,
        )
        seen.add(c.level)
        assert c.reason and "\n" not in c.reason
        if not running:
            assert c == Consistency("crash", STOPPED_REASON)
            continue
        pre_ok = pre is not None and pre.ok
        post_ok = post is None or post.ok
        aborted = pre is not None and not pre.ok and not cont
        if aborted:
            expected = "crash"
        elif pre_ok and post_ok and freeze in ("frozen", "disabled", "unavailable"):
            expected = "application"
        elif freeze == "frozen":
            expected = "file-system"
        else:
            expected = "crash"
        assert c.level == expected, (pre, post, freeze, cont, single, c)
        if aborted:
            assert ("fell back" in c.reason) == single
    assert seen == {"application", "file-system", "crash"}


# ---------------------------------------------------------------------------- quiesce (no freeze)


def test_stopped_vm_runs_no_scripts(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pre = script(tmp_path, "pre.sh", f"touch {marker}")
    with quiesce(config(preScriptLocation=pre), NoFreezer(), vm_running=False) as q:
        assert q.consistency == Consistency("crash", STOPPED_REASON)
    assert q.scripts == [] and q.freeze == "skipped" and not marker.exists()


def test_levels_end_to_end_without_a_freezer(tmp_path: Path) -> None:
    pre_ok = script(tmp_path, "pre.sh", "true")
    post_ok = script(tmp_path, "post.sh", "true")
    bad = script(tmp_path, "bad.sh", "exit 2")

    with quiesce(None, NoFreezer(), vm_running=True) as q:
        pass
    assert q.consistency.level == "crash"
    nothing = "no file-system freeze available: nothing could be quiesced"
    assert q.consistency.reason == "no pre/post scripts configured; " + nothing

    with quiesce(
        config(preScriptLocation=pre_ok, postScriptLocation=post_ok), NoFreezer(), vm_running=True
    ) as q:
        pass
    assert q.consistency.level == "application"
    assert [s.ok for s in q.scripts] == [True, True]

    cfg = config(preScriptLocation=pre_ok, postScriptLocation=post_ok, fsFreezeEnabled=False)
    with quiesce(cfg, NoFreezer(), vm_running=True) as q:
        pass
    assert q.consistency == Consistency(
        "application",
        "pre- and post-script succeeded; file-system freeze disabled (fsFreezeEnabled=false)",
    )

    with quiesce(
        config(preScriptLocation=pre_ok, postScriptLocation=bad), NoFreezer(), vm_running=True
    ) as q:
        pass
    assert q.consistency.level == "crash" and "exit code 2" in q.consistency.reason


def test_post_script_runs_after_a_failed_pre_script(tmp_path: Path) -> None:
    marker = tmp_path / "post-ran"
    pre = script(tmp_path, "pre.sh", "echo 'cannot lock' >&2; exit 1")
    post = script(tmp_path, "post.sh", f"touch {marker}")
    body_ran = False
    with quiesce(
        config(preScriptLocation=pre, postScriptLocation=post), NoFreezer(), vm_running=True
    ) as q:
        body_ran = True
    assert body_ran and marker.exists()
    assert [s.code for s in q.scripts] == ["Pre-ScriptExecutionFailed", "ok"]
    assert "cannot lock; continueBackupOnFailure=true" in q.consistency.reason


def test_post_script_runs_when_the_body_raises(tmp_path: Path) -> None:
    marker = tmp_path / "post-ran"
    pre = script(tmp_path, "pre.sh", "true")
    post = script(tmp_path, "post.sh", f"touch {marker}")
    cfg = config(preScriptLocation=pre, postScriptLocation=post)
    with (
        pytest.raises(RuntimeError, match="snapshot failed"),
        quiesce(cfg, NoFreezer(), vm_running=True) as q,
    ):
        raise RuntimeError("snapshot failed")
    assert marker.exists()
    assert len(q.scripts) == 2


def test_pre_script_failure_fails_the_backup_when_continue_is_false(tmp_path: Path) -> None:
    marker = tmp_path / "post-ran"
    pre = script(tmp_path, "pre.sh", "exit 4")
    post = script(tmp_path, "post.sh", f"touch {marker}")
    cfg = config(preScriptLocation=pre, postScriptLocation=post, continueBackupOnFailure=False)
    body_ran = False
    with pytest.raises(ConsistencyError) as err, quiesce(cfg, NoFreezer(), vm_running=True):
        body_ran = True
    assert err.value.code == "Pre-ScriptExecutionFailed" and err.value.exit_code == 1
    assert "continueBackupOnFailure=false" in err.value.message
    assert not body_ran and marker.exists()
    assert [s["code"] for s in err.value.scripts] == ["Pre-ScriptExecutionFailed", "ok"]


def test_missing_pre_script_with_continue_false_fails_with_its_code(tmp_path: Path) -> None:
    cfg = config(preScriptLocation=tmp_path / "nope.sh", continueBackupOnFailure=False)
    with pytest.raises(ConsistencyError) as err, quiesce(cfg, NoFreezer(), vm_running=True):
        pass
    assert err.value.code == "Pre-ScriptNotFound"


# ---------------------------------------------------------------------------- fsfreeze


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def loop_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Two small ext4 file systems, loop-mounted; always unfrozen and unmounted at the end."""
    base = tmp_path_factory.mktemp("fs")
    mounts: list[Path] = []
    try:
        for name in ("a", "b"):
            image, mnt = base / f"{name}.img", base / f"mnt-{name}"
            with open(image, "wb") as fh:
                fh.truncate(32 * 1024 * 1024)
            _run("mkfs.ext4", "-q", "-F", str(image))
            mnt.mkdir()
            _run("mount", "-o", "loop", str(image), str(mnt))
            mounts.append(mnt)
        yield mounts
    finally:
        for mnt in mounts:
            unfreeze(mnt)
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.fixture
def mnts(loop_mounts: list[Path]) -> Iterator[list[Path]]:
    """The module's mounts, unfrozen after each test whatever it did; blocked writers reaped."""
    reap_writers()
    yield loop_mounts
    for mnt in loop_mounts:
        unfreeze(mnt)
    reap_writers()


def test_freeze_blocks_writes_until_thaw(mnts: list[Path]) -> None:
    mnt = mnts[0]
    (mnt / "probe").unlink(missing_ok=True)
    with quiesce(None, FsFreezer([mnt]), vm_running=True) as q:
        assert q.freeze == "frozen"
        writer = blocked(mnt)
    assert writer.wait(timeout=5) == 0  # the blocked write completes once thawed
    assert (mnt / "probe").read_text() == "x\n"
    assert writable(mnt)
    assert q.consistency == Consistency(
        "file-system", "no pre/post scripts configured; file systems frozen"
    )


def test_application_level_with_scripts_and_freeze(mnts: list[Path], tmp_path: Path) -> None:
    pre = script(tmp_path, "pre.sh", "true")
    post = script(tmp_path, "post.sh", "true")
    cfg = config(preScriptLocation=pre, postScriptLocation=post)
    with quiesce(cfg, FsFreezer(mnts), vm_running=True) as q:
        blocked(mnts[0])
        blocked(mnts[1])
    assert q.consistency == Consistency(
        "application", "pre- and post-script succeeded; file systems frozen"
    )
    assert all(writable(m) for m in mnts)


def test_failed_pre_script_with_freeze_is_file_system_level(
    mnts: list[Path], tmp_path: Path
) -> None:
    pre = script(tmp_path, "pre.sh", "exit 5")
    with quiesce(config(preScriptLocation=pre), FsFreezer([mnts[0]]), vm_running=True) as q:
        blocked(mnts[0])
    assert q.consistency.level == "file-system"
    assert "exit code 5; continueBackupOnFailure=true" in q.consistency.reason


def test_body_raising_still_thaws(mnts: list[Path], tmp_path: Path) -> None:
    marker = tmp_path / "post-ran"
    post = script(tmp_path, "post.sh", f"touch {marker}")
    with (
        pytest.raises(OSError, match="disk vanished"),
        quiesce(config(postScriptLocation=post), FsFreezer(mnts), vm_running=True),
    ):
        blocked(mnts[1])
        raise OSError("disk vanished")
    assert all(writable(m) for m in mnts)
    assert marker.exists()


def test_single_disk_fallback_does_not_freeze(mnts: list[Path], tmp_path: Path) -> None:
    pre = script(tmp_path, "pre.sh", "exit 1")
    cfg = config(preScriptLocation=pre, continueBackupOnFailure=False)
    with quiesce(cfg, FsFreezer([mnts[0]]), vm_running=True, single_disk=True) as q:
        assert writable(mnts[0])
    assert q.consistency.level == "crash" and q.freeze == "skipped"
    assert "single-disk VM: fell back to crash-consistent" in q.consistency.reason


def test_freeze_failure_undoes_partial_freeze_and_degrades(
    mnts: list[Path], tmp_path: Path
) -> None:
    not_a_mount = tmp_path / "plain"
    not_a_mount.mkdir()
    freezer = FsFreezer([mnts[0], not_a_mount])
    with pytest.raises(FreezeError) as err:
        freezer.freeze()
    assert err.value.code == "FsFreezeFailed" and "not a mount point" in err.value.message
    assert writable(mnts[0])  # the first one, frozen before the failure, was thawed

    with quiesce(None, FsFreezer([mnts[0], not_a_mount]), vm_running=True) as q:
        assert writable(mnts[0])
    assert q.freeze == "failed" and q.consistency.level == "crash"
    assert "not a mount point" in q.consistency.reason


def test_thaw_goes_on_after_a_failure_and_reports_it(mnts: list[Path], tmp_path: Path) -> None:
    a, b = mnts
    marker = tmp_path / "post-ran"
    post = script(tmp_path, "post.sh", f"touch {marker}")
    with (
        pytest.raises(FreezeError) as err,
        quiesce(config(postScriptLocation=post), FsFreezer([a, b]), vm_running=True),
    ):
        unfreeze(b)  # someone else thaws b: our unfreeze of b (done first) fails
    assert err.value.code == "FsThawFailed" and str(b) in err.value.message
    assert str(a) not in err.value.message
    assert writable(a) and writable(b)
    assert marker.exists()


def test_sigterm_while_frozen_thaws(mnts: list[Path], tmp_path: Path) -> None:
    mnt = mnts[0]
    marker = tmp_path / "post-ran"
    post = script(tmp_path, "post.sh", f"touch {marker}")
    child_code = (
        "import sys, time\n"
        "from vmvault.consistency import FsFreezer, ScriptConfig, quiesce\n"
        "cfg = ScriptConfig.from_dict({'postScriptLocation': sys.argv[2]})\n"
        "with quiesce(cfg, FsFreezer([sys.argv[1]]), vm_running=True):\n"
        "    print('frozen', flush=True)\n"
        "    time.sleep(30)\n"
    )
    sigterm_while_frozen(child_code, str(mnt), str(post), mnt=mnt)
    assert writable(mnt)
    assert marker.exists()  # the post-script ran on the way out
