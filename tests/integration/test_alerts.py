"""Security alerts raised by the maintenance job and by protection changes, de-duplicated,
and deliveries recorded per attempt (a failing webhook is retried, then left alone)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

from vmvault import protection
from vmvault.alerts.deliver import MAX_ATTEMPTS, deliver_pending
from vmvault.alerts.settings import AlertSettings
from vmvault.alerts.store import list_alerts, raise_alert
from vmvault.app import protection as protection_changes
from vmvault.app.context import Context
from vmvault.app.retention import run_maintenance, run_prune
from vmvault.app.vm_backup import run_vm_backup
from vmvault.inventory import parse_inventory


def _inventory(tmp_path: Path, retention: str) -> Any:
    disk = tmp_path / "disk.img"
    if not disk.exists():
        with open(disk, "wb") as f:
            f.truncate(4 << 20)
            f.write(b"data" * 1024)
    return parse_inventory(
        f"""
[policies.nightly]
schedule = {{ kind = "daily", time = "22:00" }}
retention = {{ {retention} }}

[[vms]]
name = "soon"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "{disk}"

[[vms]]
name = "gone"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "{disk}"
""",
        "inv.toml",
    )


def _kinds(ctx: Context) -> list[str]:
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    return [a.kind for a in list_alerts(ctx.catalog(), vault_id, limit=500)[1]]


def test_maintenance_raises_purge_upcoming_once_and_purge_done(
    tmp_path: Path, ctx: Context
) -> None:
    inv = _inventory(tmp_path, "daily_days = 7")
    for vm in ("soon", "gone"):
        run_vm_backup(ctx, inv, vm)
    vault = ctx.open_vault(load_index=False)
    now = datetime.now(UTC)
    days = int(protection.settings(vault)["soft_delete_days"])
    # Soft-deleted long enough ago that "soon" is purged tomorrow and "gone" is due now.
    protection.stop(vault, "soon", delete_data=True, now=now - timedelta(days=days - 1))
    protection.stop(vault, "gone", delete_data=True, now=now - timedelta(days=days + 1))
    for _ in range(2):  # the daily job runs twice: the upcoming purge is announced once
        run_maintenance(ctx, inv)
    kinds = _kinds(ctx)
    assert kinds.count("purge_upcoming") == 1 and kinds.count("purge_done") == 1
    _, alerts = list_alerts(ctx.catalog(), vault.config.vault_id)
    done = next(a for a in alerts if a.kind == "purge_done")
    assert done.vm == "gone" and done.severity == "critical" and done.details["points"] == 1
    upcoming = next(a for a in alerts if a.kind == "purge_upcoming")
    assert upcoming.vm == "soon" and "undelete" in upcoming.message
    assert [p["vm"] for p in vault.points()] == ["soon"]


def test_shortened_retention_and_soft_delete_raise_alerts(tmp_path: Path, ctx: Context) -> None:
    run_prune(ctx, _inventory(tmp_path, "daily_days = 30"))
    assert "retention_shortened" not in _kinds(ctx)
    run_prune(ctx, _inventory(tmp_path, "daily_days = 30"))  # unchanged: no alert
    assert "retention_shortened" not in _kinds(ctx)
    run_prune(ctx, _inventory(tmp_path, "daily_days = 7"))
    assert _kinds(ctx).count("retention_shortened") == 2  # one per VM ("soon", "gone")
    protection_changes.set_soft_delete(ctx, 30)
    assert "soft_delete_shortened" not in _kinds(ctx)  # longer is safer: no alert
    protection_changes.set_soft_delete(ctx, 14)
    assert _kinds(ctx).count("soft_delete_shortened") == 1
    protection_changes.set_immutability(ctx, "on")
    assert "immutability_disabled" not in _kinds(ctx)
    protection_changes.set_immutability(ctx, "off")
    assert _kinds(ctx).count("immutability_disabled") == 1


class _Flaky(BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        _Flaky.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(_Flaky.answers.pop(0) if _Flaky.answers else 500)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_deliveries_are_recorded_retried_and_capped(ctx: Context) -> None:
    hook = HTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        vault_id = ctx.open_vault(load_index=False).config.vault_id
        catalog = ctx.catalog()
        raise_alert(catalog, vault_id, "job_failed", "job 1 (backup of a) failed: boom", vm="a")
        raise_alert(catalog, vault_id, "job_failed", "job 2 (backup of b) failed: boom", vm="b")
        url = f"http://127.0.0.1:{hook.server_port}/hooks/secret-path"
        settings = AlertSettings(webhooks=[url])
        _Flaky.answers[:] = [204, 500]  # the first alert goes through, the second fails
        assert deliver_pending(catalog, vault_id, settings) == 1
        _Flaky.answers[:] = [204]
        assert deliver_pending(catalog, vault_id, settings) == 1  # only the failed one again
        assert deliver_pending(catalog, vault_id, settings) == 0  # nothing left to send
        _, alerts = list_alerts(catalog, vault_id)
        b, a = alerts  # newest first
        assert [d["ok"] for d in a.deliveries] == [True]
        assert [d["ok"] for d in b.deliveries] == [False, True]
        assert "500" in b.deliveries[0]["error"]
        assert all("secret-path" not in d["to"] for d in a.deliveries + b.deliveries)
        assert [x["vm"] for x in _Flaky.bodies] == ["a", "b", "b"]
        raise_alert(catalog, vault_id, "job_failed", "job 3 failed", vm="c")
        _Flaky.answers[:] = []  # the webhook now fails every time
        for _ in range(MAX_ATTEMPTS + 2):
            deliver_pending(catalog, vault_id, settings)
        _, alerts = list_alerts(catalog, vault_id)
        assert len(alerts[0].deliveries) == MAX_ATTEMPTS  # then it stops trying
    finally:
        hook.shutdown()
