"""An export bound to a process lives exactly as long as that process (export/state.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from vmvault.export.state import owner_alive, process_start


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
