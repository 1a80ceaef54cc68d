"""A lost pack or a damaged point costs that object only: later backups heal, the rest works."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli, same_content
from vmvault import testdisk
from vmvault.alerts.store import list_alerts
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point
from vmvault.app.restore import run_restore
from vmvault.app.vaults import reindex as app_reindex
from vmvault.app.vaults import run_check, run_gc
from vmvault.backends.local import LocalBackend
from vmvault.engine.gc import collect_garbage
from vmvault.errors import VmvaultError
from vmvault.vault.format import KIND_DATA
from vmvault.vault.vault import Vault

MiB = testdisk.MiB


def _env(ctx: Context) -> dict[str, str]:
    return {
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": ctx.catalog_url or "",
        "VMVAULT_PASSPHRASE": PASSPHRASE,
    }


def _data_pack_paths(ctx: Context) -> list[Path]:
    vault = ctx.open_vault()
    packs = {loc.pack_id for _, loc in vault.index.items() if loc.kind == KIND_DATA}
    root = Path(ctx.vault_path) / "packs"
    return sorted(root / p.hex()[:2] / p.hex() for p in packs)


def _alert_kinds(ctx: Context) -> set[str]:
    vault = ctx.open_vault(load_index=False)
    _, rows = list_alerts(ctx.catalog(), vault.config.vault_id, limit=500)
    return {a.kind for a in rows}


@pytest.mark.parametrize("mode", ["incremental", "full", "reindexed-incremental"])
def test_backup_after_a_lost_pack_stores_its_chunks_again(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path], mode: str
) -> None:
    image = make_image(size=24 * MiB)
    spec = [DiskSpec("os", str(image))]
    first = run_backup(ctx, "vm", spec)
    lost = _data_pack_paths(ctx)[0]
    lost.unlink()
    if mode == "reindexed-incremental":
        app_reindex(ctx)

    point = run_backup(ctx, "vm", spec, full=mode == "full")
    assert point["disks"][0]["stats"]["new"] > 0  # the lost chunks travelled again

    env = _env(ctx)
    verify = run_cli("verify", point["id"], "--json", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    restored = tmp_path / "restored.img"
    run_restore(ctx, point["id"], str(restored))
    assert same_content(image, restored)
    # the chunks stored again heal the older point too
    healed = tmp_path / "healed.img"
    run_restore(ctx, first["id"], str(healed))
    assert same_content(image, healed)
    check = run_cli("check", "--json", env=env)
    if mode != "reindexed-incremental":  # (a rebuilt index has forgotten the pack)
        # the loss is reported: an alert, and `check` names the pack
        assert "vault_damaged" in _alert_kinds(ctx)
        assert check.returncode == 3
        problems = json.loads(check.stdout)["problems"]
        assert any(p["kind"] == "pack_missing" and lost.name in p["object"] for p in problems)
        # once nothing needs it, GC drops the lost pack from the index
        assert run_gc(ctx, grace=0).deleted_packs >= 1
    healthy = run_check(ctx, read_data=True)  # the CLI's check is the one above
    assert healthy.ok, healthy.problems


def test_incremental_with_change_hints_reads_chunks_of_a_lost_pack(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    """Chunks a dirty bitmap calls unchanged are not inherited when their pack is gone."""
    image = make_image(size=16 * MiB)
    run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    for path in _data_pack_paths(ctx):
        path.unlink()
    hinted = DiskSpec("os", str(image), changed=[(0, 65536)])
    point = run_backup(ctx, "vm", [hinted])
    restored = tmp_path / "restored.img"
    run_restore(ctx, point["id"], str(restored))
    assert same_content(image, restored)


def _damage_point(ctx: Context, point_id: str) -> None:
    path = Path(ctx.vault_path) / "points" / point_id
    with open(path, "r+b") as f:
        f.truncate(10)


def test_a_damaged_point_costs_that_point_only(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=16 * MiB)
    other = make_image("other.img", size=8 * MiB, seed=2)
    first = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    run_backup(ctx, "db", [DiskSpec("data", str(other))])
    _damage_point(ctx, first["id"])
    env = _env(ctx)

    # backups of any VM keep working (the damaged point is no parent)
    again = run_cli("backup", str(image), "--vm", "vm", "--json", env=env)
    assert again.returncode == 0, again.stderr
    run_backup(ctx, "db", [DiskSpec("data", str(other))])  # the CLI's part is the line above

    listing = run_cli("list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    doc = json.loads(listing.stdout)
    assert [d["id"] for d in doc["damaged"]] == [first["id"]]
    assert len(doc["points"]) == 3

    verify = run_cli("verify", "latest", "--vm", "vm", env=env)
    assert verify.returncode == 0, verify.stderr
    damaged_verify = run_cli("verify", first["id"], env=env)
    assert damaged_verify.returncode == 3
    assert len(damaged_verify.stderr.strip().splitlines()) == 1

    check = run_cli("check", "--json", env=env)
    assert check.returncode == 3
    kinds = {(p["kind"], p["object"]) for p in json.loads(check.stdout)["problems"]}
    assert ("point_unreadable", first["id"]) in kinds
    assert "point_damaged" in _alert_kinds(ctx)

    reindex = run_cli("vault", "reindex", "--json", env=env)
    assert reindex.returncode == 0, reindex.stderr
    assert json.loads(reindex.stdout)["damaged_points"] == [first["id"]]

    # GC cannot know what only that point used: it refuses, unless forced
    gc = run_cli("gc", "--grace", "0", env=env)
    assert gc.returncode != 0
    assert first["id"] in gc.stderr and "--force" in gc.stderr
    assert len(gc.stderr.strip().splitlines()) == 1

    forget = run_cli("forget", first["id"], env=env)
    assert forget.returncode == 0, forget.stderr
    assert not (Path(ctx.vault_path) / "points" / first["id"]).exists()
    # Once forgotten, the vault is whole again (the CLI's exit codes were checked above).
    assert not run_gc(ctx, grace=0).damaged
    report = run_check(ctx, read_data=True)
    assert report.ok, report.problems
    restored = tmp_path / "restored.img"
    run_restore(ctx, "latest", str(restored), vm="vm")
    assert same_content(image, restored)


def test_gc_force_skips_a_damaged_point(ctx: Context, make_image: Callable[..., Path]) -> None:
    image = make_image(size=8 * MiB)
    first = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    testdisk.mutate_disk(image, 10, seed=5)
    run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    _damage_point(ctx, first["id"])
    with pytest.raises(VmvaultError, match="--force"):
        run_gc(ctx, grace=0)
    report = run_gc(ctx, grace=0, force=True)
    assert report.damaged_points == [first["id"]]
    assert run_check(ctx, read_data=True).problems[0].kind == "point_unreadable"


def test_server_answers_with_a_damaged_point(ctx: Context, make_image: Callable[..., Path]) -> None:
    from fastapi.testclient import TestClient

    from vmvault.server.accounts import Accounts
    from vmvault.server.app import create_app
    from vmvault.server.state import ServerConfig

    image = make_image(size=8 * MiB)
    first = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    _damage_point(ctx, first["id"])
    config = ServerConfig(ctx.vault_path, ctx.catalog_url, scheduler=False, worker=False)
    app = create_app(config)
    with TestClient(app) as client:
        token = Accounts(ctx.catalog()).create_token("t", "admin")[0]
        headers = {"Authorization": f"Bearer {token}"}
        for route in ("/vault", "/vms", "/points", "/cost", "/plan"):
            answer = client.get(f"/api/v1{route}", headers=headers)
            assert answer.status_code == 200, (route, answer.text)
        assert client.get("/metrics", headers=headers).status_code == 200
        points = client.get("/api/v1/points", headers=headers).json()
        assert points["damaged"] == [{"id": first["id"], "error": points["damaged"][0]["error"]}]
        assert "too short" in points["damaged"][0]["error"]
        vault_doc = client.get("/api/v1/vault", headers=headers).json()
        assert vault_doc["damaged_points"] == [first["id"]]
        login = client.post(
            "/login",
            data={"token": token},
            headers={"Origin": str(client.base_url)},
            follow_redirects=True,
        )
        assert login.status_code == 200, login.text
        page = client.get("/")
        assert "Damaged recovery points" in page.text and first["id"] in page.text
        deleted = client.delete(f"/api/v1/points/{first['id']}", headers=headers)
        assert deleted.status_code == 200, deleted.text


def test_a_damaged_index_object_is_named_and_its_packs_adopted(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=16 * MiB)
    first = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    [index_object] = (Path(ctx.vault_path) / "index").iterdir()
    data = bytearray(index_object.read_bytes())
    data[len(data) // 2] ^= 0x01
    index_object.write_bytes(bytes(data))
    env = _env(ctx)
    check = run_cli("check", "--json", env=env)
    assert check.returncode == 3, check.stderr  # damage found, not a failure to run
    kinds = {p["kind"] for p in json.loads(check.stdout)["problems"]}
    assert "index_unreadable" in kinds
    # the next backup adopts the packs from their own headers: nothing is stored twice
    second = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    assert second["disks"][0]["stats"]["new"] == 0
    restored = tmp_path / "restored.img"
    run_restore(ctx, first["id"], str(restored))
    assert same_content(image, restored)
    assert run_gc(ctx, grace=0).deleted_packs == 0
    healthy = run_check(ctx, read_data=True)  # GC replaced the index
    assert healthy.ok, healthy.problems


class _Crash(BaseException):
    """Stands for the process dying: nothing after it runs."""


class _DiesAfterOnePackDelete(LocalBackend):
    def delete(self, key: str) -> None:
        super().delete(key)
        if key.startswith("packs/"):
            raise _Crash


def test_an_interrupted_sweep_is_no_lost_pack(
    tmp_path: Path, ctx: Context, make_image: Callable[..., Path]
) -> None:
    image = make_image(size=16 * MiB)
    first = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    testdisk.mutate_disk(image, 30, seed=4)
    second = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    forget_point(ctx, first["id"])
    crashing = Vault.open(_DiesAfterOnePackDelete(ctx.vault_path), PASSPHRASE)
    with pytest.raises(_Crash):
        collect_garbage(crashing, grace=0, repack_threshold=0.01)

    report = run_check(ctx, read_data=True)
    assert report.ok, [p.to_dict() for p in report.problems]
    assert "sweep_interrupted" in {p.kind for p in report.problems}
    third = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    assert "vault_damaged" not in _alert_kinds(ctx)  # deleted on purpose, not lost
    assert run_gc(ctx, grace=0).deleted_packs >= 1
    after = run_check(ctx, read_data=True)
    assert after.ok and not after.problems, [p.to_dict() for p in after.problems]
    for point in (second, third):
        restored = tmp_path / f"{point['id']}.img"
        run_restore(ctx, point["id"], str(restored))
        assert same_content(image, restored)
