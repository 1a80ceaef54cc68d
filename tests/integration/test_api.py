"""The REST API: auth and roles on every route, errors as JSON, jobs run by the worker,
restores, alerts delivered to a real webhook and SMTP server, the audit log, metrics."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient

from support.cli import same_content
from support.serverkit import Site, make_site
from vmvault.app.replication import run_replicate
from vmvault.protection import stop as stop_protection
from vmvault.server.app import create_app

# Every route: method, path, least role, a valid body. Paths use ids the site has.
ROUTES: list[tuple[str, str, str, Any]] = [
    ("GET", "/api/v1/vault", "reader", None),
    ("PATCH", "/api/v1/vault", "admin", {}),
    ("GET", "/api/v1/vault/copies", "reader", None),
    ("GET", "/api/v1/vms", "reader", None),
    ("GET", "/api/v1/vms/web01", "reader", None),
    ("GET", "/api/v1/vms/web01/points", "reader", None),
    ("POST", "/api/v1/vms/db01/backup", "operator", {}),
    ("POST", "/api/v1/vms/db01/protection", "admin", {"action": "resume"}),
    ("GET", "/api/v1/policies", "reader", None),
    ("GET", "/api/v1/policies/nightly", "reader", None),
    ("GET", "/api/v1/inventory", "admin", None),
    ("PUT", "/api/v1/inventory", "admin", "SAME"),
    ("GET", "/api/v1/jobs", "reader", None),
    ("GET", "/api/v1/jobs/1", "reader", None),
    ("POST", "/api/v1/jobs/999999/cancel", "operator", None),
    ("GET", "/api/v1/points", "reader", None),
    ("GET", "/api/v1/points/POINT", "reader", None),
    ("DELETE", "/api/v1/points/nonexistent", "admin", None),
    ("POST", "/api/v1/points/POINT/verify", "operator", None),
    ("GET", "/api/v1/points/POINT/files", "reader", None),
    ("POST", "/api/v1/maintenance", "admin", None),
    ("POST", "/api/v1/restores", "operator", {"vm": "web01", "new_name": "role-check"}),
    ("GET", "/api/v1/plan", "reader", None),
    ("GET", "/api/v1/plan/chart.svg", "reader", None),
    ("GET", "/api/v1/cost", "reader", None),
    ("GET", "/api/v1/reports/summary", "reader", None),
    ("GET", "/api/v1/reports/charts/vms.svg", "reader", None),
    ("GET", "/api/v1/reports/monthly", "reader", None),
    ("GET", "/api/v1/alerts", "reader", None),
    ("GET", "/api/v1/audit", "admin", None),
    ("GET", "/api/v1/tokens", "admin", None),
    ("POST", "/api/v1/tokens", "admin", {"name": "made-by-test", "role": "reader"}),
    ("DELETE", "/api/v1/tokens/999999", "admin", None),
    ("GET", "/metrics", "reader", None),
    ("GET", "/api/openapi.json", "reader", None),
]
RANK = {"reader": 1, "operator": 2, "admin": 3}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return make_site(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def client(site: Site) -> Iterator[TestClient]:
    with TestClient(create_app(site.config)) as c:
        yield c


def _point(client: TestClient, site: Site) -> str:
    doc = client.get("/api/v1/vms/web01/points", headers=site.auth("reader")).json()
    return str(doc["items"][0]["id"])


def _call(client: TestClient, site: Site, method: str, path: str, body: Any, role: str | None):
    path = path.replace("POINT", _point(client, site))
    if body == "SAME":
        body = {"toml": Path(site.config.inventory or "").read_text()}
    headers = site.auth(role) if role else {}
    return client.request(method, path, headers=headers, json=body)


def _wait(client: TestClient, site: Site, job_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=site.auth("reader")).json()
        if job["state"] in ("succeeded", "failed", "cancelled", "partially_succeeded"):
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_health_needs_no_auth_and_everything_else_does(client: TestClient, site: Site) -> None:
    health = client.get("/api/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    for method, path, _, body in ROUTES:
        answer = _call(client, site, method, path, body, None)
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"
    bad = client.get("/api/v1/vms", headers={"Authorization": "Bearer vmv_not-a-token"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"
    basic = client.get("/api/v1/vms", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert basic.status_code == 401 and basic.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("role", ["reader", "operator", "admin"])
def test_each_role_gets_exactly_its_routes(client: TestClient, site: Site, role: str) -> None:
    for method, path, needed, body in ROUTES:
        answer = _call(client, site, method, path, body, role)
        if RANK[role] < RANK[needed]:
            assert answer.status_code == 403, (role, method, path, answer.text)
            assert answer.json()["error"]["code"] == "forbidden"
        else:
            assert answer.status_code not in (401, 403), (role, method, path, answer.text)
            assert answer.status_code < 500, (role, method, path, answer.text)


def test_bad_payloads_get_422_naming_the_field(client: TestClient, site: Site) -> None:
    admin, operator = site.auth("admin"), site.auth("operator")
    cases = [
        (
            "POST",
            "/api/v1/restores",
            operator,
            {"vm": "web01", "new_name": "../../etc"},
            "new_name",
        ),
        ("POST", "/api/v1/restores", operator, {"vm": "web01"}, "new_name"),
        ("POST", "/api/v1/tokens", admin, {"name": "x", "role": "root"}, "role"),
        ("POST", "/api/v1/vms/web01/backup", operator, {"full": "maybe"}, "full"),
        ("POST", "/api/v1/vms/web01/backup", operator, {"fast": True}, "fast"),
        ("PATCH", "/api/v1/vault", admin, {"soft_delete_days": 3}, "soft_delete_days"),
        ("GET", "/api/v1/jobs?limit=0", operator, None, "limit"),
        ("GET", "/api/v1/cost?currency=dollars", operator, None, "currency"),
    ]
    for method, path, headers, body, field in cases:
        answer = client.request(method, path, headers=headers, json=body)
        assert answer.status_code == 422, (path, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "invalid_request" and field in error["message"], error
    broken = client.post(
        "/api/v1/tokens",
        headers={**admin, "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert broken.status_code == 422


def test_unknown_ids_get_404(client: TestClient, site: Site) -> None:
    reader, admin = site.auth("reader"), site.auth("admin")
    for path in (
        "/api/v1/jobs/987654",
        "/api/v1/points/20990101T000000.000000Z-none",
        "/api/v1/vms/nope",
        "/api/v1/vms/nope/points",
        "/api/v1/policies/nope",
        "/api/v1/no-such-route",
    ):
        answer = client.get(path, headers=reader)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["error"]["code"].endswith("not_found")
    assert client.delete("/api/v1/tokens/987654", headers=admin).status_code == 404
    missing_vm = client.post("/api/v1/vms/nope/backup", headers=site.auth("operator"), json={})
    assert missing_vm.status_code == 404 and "no VM named 'nope'" in missing_vm.text


def test_backup_now_runs_with_live_progress_and_makes_a_point(
    client: TestClient, site: Site
) -> None:
    operator = site.auth("operator")
    before = client.get("/api/v1/vms/db01/points", headers=operator).json()["total"]
    queued = client.post("/api/v1/vms/db01/backup", headers=operator, json={"full": True})
    assert queued.status_code == 202 and queued.json()["state"] in ("queued", "running")
    job = _wait(client, site, queued.json()["id"])
    assert job["state"] == "succeeded", job
    assert (
        job["percent"] == 100.0 and job["progress"]["os"]["done"] == job["progress"]["os"]["total"]
    )
    # what the disk's progress record says was read, and the rate of the bytes read
    assert 0 < job["progress"]["os"]["read"] <= job["progress"]["os"]["total"]
    assert job["live"]["elapsed"] > 0 and job["live"]["rate"] > 0 and job["live"]["eta"] is None
    points = client.get("/api/v1/vms/db01/points", headers=operator).json()
    assert points["total"] == before + 1 and points["items"][0]["id"] == job["point_id"]
    vm = client.get("/api/v1/vms/db01", headers=operator).json()
    assert vm["last_point"] == job["point_id"] and vm["consistency"] == "crash"
    assert vm["next_run"] and vm["protection"] == "protected"
    page = client.get("/api/v1/jobs?limit=1&offset=0", headers=operator).json()
    assert len(page["items"]) == 1 and page["total"] >= 1 and page["limit"] == 1
    # A unique prefix names a point; one that web01's point shares too is refused.
    by_prefix = client.get(f"/api/v1/points/{job['point_id'][:20]}", headers=operator)
    assert by_prefix.status_code == 200 and by_prefix.json()["id"] == job["point_id"]
    ambiguous = client.get("/api/v1/points/2", headers=operator)
    assert ambiguous.status_code == 400, ambiguous.text
    assert ambiguous.json()["error"]["code"] == "ambiguous_point"
    assert "give more of the id" in ambiguous.json()["error"]["message"]


def test_verify_and_restore_as_a_new_vm(client: TestClient, site: Site) -> None:
    operator = site.auth("operator")
    point = _point(client, site)
    verify = client.post(f"/api/v1/points/{point}/verify", headers=operator)
    assert verify.status_code == 202
    assert _wait(client, site, verify.json()["id"])["state"] == "succeeded"
    # The point's last verify is this job's, in its document and in the lists.
    verified = client.get(f"/api/v1/points/{point}", headers=operator).json()["last_verified"]
    assert verified["job"] == verify.json()["id"] and verified["ok"] is True
    assert verified["damaged"] == 0 and verified["bytes_read"] > 0
    listed = client.get("/api/v1/vms/web01/points", headers=operator).json()["items"]
    assert [p["last_verified"] for p in listed if p["id"] == point] == [verified]
    queued = client.post(
        "/api/v1/restores",
        headers=operator,
        json={"vm": "web01", "point": point, "new_name": "web01-copy"},
    )
    assert queued.status_code == 202, queued.text
    job = _wait(client, site, queued.json()["id"])
    assert job["state"] == "succeeded", job
    restores = client.get("/api/v1/jobs?vm=web01&limit=500", headers=operator).json()["items"]
    # One job per VM restore: no extra rows for its disks.
    assert all("new_vm" in j["details"] for j in restores if j["kind"] == "restore")
    assert job["bytes_written"] > 0 and job["details"]["new_vm"] == "web01-copy"
    restored = site.root / "restores" / "web01-copy"
    assert same_content(restored / "web01-copy-os.img", site.root / "disks" / "web01-os.img")
    assert same_content(restored / "web01-copy-data.img", site.root / "disks" / "web01-data.img")
    assert not list(restored.glob("*temp*"))  # the temporary disk was never backed up
    again = client.post(
        "/api/v1/restores", headers=operator, json={"vm": "web01", "new_name": "web01-copy"}
    )
    assert again.status_code == 409
    clash = client.post(
        "/api/v1/restores", headers=operator, json={"vm": "web01", "new_name": "db01"}
    )
    assert clash.status_code == 409
    # A VM gone from the inventory whose protection the vault still keeps: the same clash.
    stop_protection(site.ctx.open_vault(load_index=False), "retired01", delete_data=False)
    retired = client.post(
        "/api/v1/restores", headers=operator, json={"vm": "web01", "new_name": "retired01"}
    )
    assert retired.status_code == 409, retired.text
    error = retired.json()["error"]
    assert error["code"] == "conflict" and "'retired01' exists in the vault" in error["message"]
    # The dashboard's point page and points table show the point's last verify too (a
    # client outside `with`: its lifespan would stop the server's workers at its end).
    browser = TestClient(client.app)
    browser.post("/login", data={"token": site.tokens["reader"]})
    shown = browser.get(f"/points/{point}").text
    [cell] = re.findall(r'<dd class="verified">(.*?)</dd>', shown, re.S)
    row = browser.get("/vms/web01").text.split(f'data-point="{point}"')[1].split("</tr>")[0]
    [cell2] = re.findall(r'<td class="verified">(.*?)</td>', row, re.S)
    assert '<span class="badge ok">ok</span>' in cell and "read in" in cell
    assert '<span class="badge ok">ok</span>' in cell2


def test_restore_some_disks_in_another_format_or_in_place(client: TestClient, site: Site) -> None:
    operator = site.auth("operator")
    point = _point(client, site)
    queued = client.post(
        "/api/v1/restores",
        headers=operator,
        json={
            "vm": "web01",
            "point": point,
            "new_name": "web01-os",
            "disks": ["os"],
            "format": "qcow2",
        },
    )
    assert queued.status_code == 202, queued.text
    job = _wait(client, site, queued.json()["id"])
    assert job["state"] == "succeeded", job
    [disk] = job["details"]["disks"]  # where the disks went, as the dashboard shows it
    assert disk["name"] == "os" and disk["path"].endswith("web01-os/web01-os-os.qcow2")
    assert Path(disk["path"]).read_bytes()[:4] == b"QFI\xfb"

    refusals = [
        ({"disks": ["nope"], "new_name": "x1"}, 400, "no disk 'nope'"),
        ({"in_place": True}, 400, "confirm with the VM's name"),
        ({"in_place": True, "confirm": "web01", "format": "raw"}, 400, "keeps each disk's"),
        ({"new_name": "x2", "format": "vmdk"}, 422, "format"),
    ]
    for extra, status, message in refusals:
        answer = client.post("/api/v1/restores", headers=operator, json={"vm": "web01", **extra})
        assert answer.status_code == status and message in answer.text, (extra, answer.text)

    before = (site.root / "disks" / "web01-os.img").read_bytes()
    (site.root / "disks" / "web01-os.img").write_bytes(b"\xee" * len(before))  # it broke
    in_place = client.post(
        "/api/v1/restores",
        headers=operator,
        json={"vm": "web01", "point": point, "in_place": True, "confirm": "web01", "disks": ["os"]},
    )
    assert in_place.status_code == 202, in_place.text
    job = _wait(client, site, in_place.json()["id"])
    assert job["state"] == "succeeded", job
    assert (site.root / "disks" / "web01-os.img").read_bytes() == before
    assert job["details"]["safety_point"]  # the broken disk was backed up first


def test_tokens_are_shown_once_work_and_can_be_revoked(client: TestClient, site: Site) -> None:
    admin = site.auth("admin")
    made = client.post("/api/v1/tokens", headers=admin, json={"name": "ci-bot", "role": "operator"})
    assert made.status_code == 201
    secret = made.json()["token"]
    listed = client.get("/api/v1/tokens", headers=admin).json()["items"]
    assert "ci-bot" in [t["name"] for t in listed]
    assert secret not in json.dumps(listed) and all("token" not in t for t in listed)
    mine = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/vms", headers=mine).status_code == 200
    assert client.get("/api/v1/tokens", headers=mine).status_code == 403
    revoked = client.delete(f"/api/v1/tokens/{made.json()['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked"]
    gone = client.get("/api/v1/vms", headers=mine)
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "invalid_token"


def test_every_write_is_audited_with_who_and_outcome(client: TestClient, site: Site) -> None:
    client.post("/api/v1/tokens", headers=site.auth("reader"), json={"name": "x", "role": "admin"})
    client.post(
        "/api/v1/tokens", headers=site.auth("admin"), json={"name": "audited", "role": "reader"}
    )
    entries = client.get("/api/v1/audit?limit=500", headers=site.auth("admin")).json()["items"]
    refused = [
        e for e in entries if e["actor"] == "reader-token" and e["action"] == "POST /api/v1/tokens"
    ]
    allowed = [
        e for e in entries if e["actor"] == "admin-token" and e["action"] == "POST /api/v1/tokens"
    ]
    assert refused and refused[0]["status"] == 403
    assert allowed and allowed[0]["status"] == 201 and allowed[0]["at"]
    anonymous = client.post("/api/v1/vms/web01/backup")
    assert anonymous.status_code == 401
    entries = client.get("/api/v1/audit?limit=500", headers=site.auth("admin")).json()["items"]
    assert any(e["actor"] == "anonymous" and e["status"] == 401 for e in entries)
    assert all(
        client.get("/api/v1/vms", headers=site.auth("reader")).status_code == 200 for _ in "x"
    )
    assert not any(e["action"].startswith("GET") for e in entries)


def test_inventory_replaced_only_when_valid(client: TestClient, site: Site) -> None:
    admin = site.auth("admin")
    current = client.get("/api/v1/inventory", headers=admin).json()["toml"]
    broken = current.replace('role = "os"', 'role = "boot"', 1)
    answer = client.put("/api/v1/inventory", headers=admin, json={"toml": broken})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_inventory"
    assert "role" in answer.json()["error"]["message"]
    assert Path(site.config.inventory or "").read_text() == current  # untouched
    disk = site.root / "disks" / "db01-os.img"
    added = current + (
        f'\n[[vms]]\nname = "app02"\nstate = "stopped"\n'
        f'[[vms.disks]]\nname = "os"\npath = "{disk}"\n'
    )
    assert client.put("/api/v1/inventory", headers=admin, json={"toml": added}).status_code == 200
    names = [v["name"] for v in client.get("/api/v1/vms", headers=admin).json()["items"]]
    assert "app02" in names
    assert client.put("/api/v1/inventory", headers=admin, json={"toml": current}).status_code == 200


def test_plan_gives_each_pool_its_budget_beside_its_load(client: TestClient, site: Site) -> None:
    plan = client.get("/api/v1/plan?day=2026-12-01", headers=site.auth("reader")).json()
    fast = plan["pools"]["fast"]
    assert fast["budget_mb_s"] == 200.0  # the inventory's egress_mb_per_s
    assert 0 < fast["peak_mb_s"] <= fast["budget_mb_s"] and max(fast["load_mb_s"]) > 0
    assert {j["vm"] for j in plan["jobs"]} == {"web01", "db01"}
    chart = client.get("/api/v1/plan/chart.svg?day=2026-12-01", headers=site.auth("reader"))
    assert chart.headers["content-type"] == "image/svg+xml" and b"<svg" in chart.content


def test_metrics_in_prometheus_format(client: TestClient, site: Site) -> None:
    answer = client.get("/metrics", headers=site.auth("reader"))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert 'vmvault_recovery_points{vm="web01"}' in answer.text
    assert "vmvault_last_backup_timestamp_seconds" in answer.text


def test_session_cookie_login_csrf_and_logout(client: TestClient, site: Site) -> None:
    with TestClient(client.app) as browser:
        assert browser.get("/", follow_redirects=False).headers["location"] == "/login"
        wrong = browser.post("/login", data={"token": "vmv_wrong"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        ok = browser.post("/login", data={"token": site.tokens["operator"]}, follow_redirects=False)
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/api/v1/vms").status_code == 200
        no_csrf = browser.post("/api/v1/vms/web01/backup", json={})
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
        page = browser.get("/").text
        csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
        with_csrf = browser.post("/api/v1/vms/db01/backup", json={}, headers={"X-CSRF-Token": csrf})
        assert with_csrf.status_code == 202
        _wait(client, site, with_csrf.json()["id"])
        browser.post("/logout")
        assert browser.get("/api/v1/vms").status_code == 401
    entries = client.get("/api/v1/audit", headers=site.auth("admin")).json()["items"]
    actions = [(e["actor"], e["action"]) for e in entries]
    assert ("operator-token", "POST /logout") in actions
    assert ("operator-token", "POST /login") in actions


def test_copies_with_last_success_and_lag_in_api_and_dashboard(
    client: TestClient, site: Site
) -> None:
    _point(client, site)  # the site has a point by now (the backup tests ran before)
    report = run_replicate(site.ctx, str(site.root / "offsite-copy"))
    assert report.copied
    doc = client.get("/api/v1/vault/copies", headers=site.auth("reader")).json()
    [copy] = [c for c in doc["items"] if c["destination"] == str(site.root / "offsite-copy")]
    assert copy["last_success"] and copy["last_run"]["state"] == "succeeded"
    assert copy["points_waiting"] == 0 and copy["lag_seconds"] == 0
    with TestClient(client.app) as browser:
        browser.post("/login", data={"token": site.tokens["reader"]})
        page = browser.get("/copies")
        assert page.status_code == 200
        assert str(site.root / "offsite-copy") in page.text and "in sync" in page.text


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_alerts_reach_webhook_and_smtp_and_are_listed(tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    class Inbox:
        messages: ClassVar[list[Any]] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            Inbox.messages.append(envelope)
            return "250 OK"

    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    smtp = Controller(Inbox(), hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        alerts = (
            f'[alerts]\nwebhooks = ["http://127.0.0.1:{hook.server_port}/hook/s3cr3t"]\n'
            f'smtp = {{ host = "127.0.0.1", port = {port}, from = "vmvault@example.org", '
            'to = ["ops@example.org"] }\n'
        )
        site = make_site(tmp_path / "site", backup=False, extra_inventory=alerts)
        (site.root / "disks" / "db01-os.img").unlink()  # its next backup fails
        with TestClient(create_app(site.config)) as client:
            admin = site.auth("admin")
            failed = client.post("/api/v1/vms/db01/backup", headers=admin, json={})
            assert _wait(client, site, failed.json()["id"])["state"] == "failed"
            client.patch("/api/v1/vault", headers=admin, json={"immutability": "on"})
            client.patch("/api/v1/vault", headers=admin, json={"immutability": "off"})
            stop = client.post(
                "/api/v1/vms/web01/protection",
                headers=admin,
                json={"action": "stop", "delete_data": True},
            )
            assert stop.status_code == 200 and stop.json()["status"] == "stopped-deleted"
            deadline = time.monotonic() + 30
            kinds = {"job_failed", "immutability_disabled", "backup_data_deleted"}
            while time.monotonic() < deadline:
                listed = client.get("/api/v1/alerts", headers=site.auth("reader")).json()["items"]
                delivered = {a["kind"] for a in listed if len(a["deliveries"]) == 2}
                if kinds <= delivered:
                    break
                time.sleep(0.3)
            assert kinds <= {a["kind"] for a in listed}
            assert kinds <= delivered, listed
            for alert in listed:
                assert all(d["ok"] for d in alert["deliveries"]), alert["deliveries"]
                assert all("s3cr3t" not in d["to"] for d in alert["deliveries"])
        assert kinds <= {a["kind"] for a in _Hook.received}
        failure = next(a for a in _Hook.received if a["kind"] == "job_failed")
        assert failure["vm"] == "db01" and "failed" in failure["message"]
        subjects = [m.content.decode() for m in Inbox.messages]
        assert any("job_failed" in s for s in subjects) and len(Inbox.messages) >= 3
    finally:
        smtp.stop()
        hook.shutdown()


def test_store_retention_is_asked_only_where_the_store_can(client: TestClient, site: Site) -> None:
    admin = site.auth("admin")
    before = client.get("/api/v1/vault", headers=admin).json()
    assert before["store_retention_days"] is None  # a directory: the store is never asked
    refused = client.patch("/api/v1/vault", headers=admin, json={"store_retention_days": 5})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "store_retention_unavailable" and "a directory" in error["message"]
    after = client.get("/api/v1/vault", headers=admin).json()
    assert after["immutability"] == before["immutability"]  # refused before any change
    bad = client.patch("/api/v1/vault", headers=admin, json={"store_retention_days": -1})
    assert bad.status_code == 422 and "store_retention_days" in bad.json()["error"]["message"]
