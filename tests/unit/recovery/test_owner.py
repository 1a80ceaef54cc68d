"""An export bound to a process lives exactly as long as that process (export/state.py)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from vmvault.export.state import owner_alive, process_start
from vmvault.export.watchdog import INTERVAL, Watchdog


def test_owner_alive_follows_the_process_and_not_a_reused_pid(tmp_path: Path) -> None:
    owner = tmp_path / "x.owner"
    assert owner_alive(owner) is None  # not bound: the expiry applies
    child = subprocess.Popen(["sleep", "30"])
    try:
        start = process_start(child.pid)
        assert start is not None
        owner.write_text(json.dumps({"pid": child.pid, "start": start}))
        assert owner_alive(owner) is True
        owner.write_text(json.dumps({"pid": child.pid, "start": start + 1}))
        assert owner_alive(owner) is False  # same pid, another process
        owner.write_text(json.dumps({"pid": child.pid, "start": start}))
    finally:
        child.kill()
        child.wait()
    assert owner_alive(owner) is False


def test_a_bound_export_outlives_its_expiry_and_ends_with_its_owner(tmp_path: Path) -> None:
    ended = threading.Event()
    owner = tmp_path / "x.owner"
    child = subprocess.Popen(["sleep", "30"])
    try:
        owner.write_text(json.dumps({"pid": child.pid, "start": process_start(child.pid)}))
        watchdog = Watchdog(
            time.time() - 1, None, ended.set, socket_path=None, port=None, owner=owner
        )
        watchdog.start()
        assert not ended.wait(3 * INTERVAL)  # expired long ago, but its VM runs
        child.kill()
        child.wait()
        assert ended.wait(5 * INTERVAL) and watchdog.reason == "its owner process ended"
        watchdog.stop()
    finally:
        child.kill()
        child.wait()


def test_an_unbound_export_still_expires(tmp_path: Path) -> None:
    ended = threading.Event()
    watchdog = Watchdog(
        time.time() - 1, None, ended.set, socket_path=None, port=None, owner=tmp_path / "x.owner"
    )
    watchdog.start()
    assert ended.wait(5 * INTERVAL) and watchdog.reason == "expired"
    watchdog.stop()
