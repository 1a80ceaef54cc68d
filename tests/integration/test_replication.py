"""Replication to a copy of the vault (`vault replicate`) and restores from the copy
(`restore --from`): what crosses, what resumes, what is refused, and the vault gone."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from support.cli import PASSPHRASE, run_cli, same_content
from support.faultkit import FaultyBackend
from support.s3kit import READER_KEY, READER_SECRET, S3Vault
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.points import forget_point
from vmvault.app.replication import run_replicate
from vmvault.app.restore import run_restore
from vmvault.app.retention import run_prune
from vmvault.app.vaults import init_vault, run_check
from vmvault.backends.base import Backend
from vmvault.backends.local import LocalBackend
from vmvault.backends.retry import RetryingBackend
from vmvault.backends.url import open_backend
from vmvault.catalog.replication import copies_status, replication_jobs
from vmvault.errors import UsageError, VmvaultError, WrongPassphrase
from vmvault.inventory import load_inventory
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.scheduler import SchedulerState, tick
from vmvault.jobs.worker import run_worker
from vmvault.model.jobs import JobKind
from vmvault.model.point import RecoveryPoint
from vmvault.vault.packs import pack_key
from vmvault.vault.replica import replica_doc
from vmvault.vault.vault import Vault

MiB = testdisk.MiB


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMVAULT_PASSPHRASE", PASSPHRASE)
    for name in ("VMVAULT_COPY_PASSPHRASE", "VMVAULT_COPY_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)


def _history(tmp_path: Path, ctx: Context, rounds: int = 3) -> list[tuple[RecoveryPoint, Path]]:
    """Backups of a changing disk; each point with a copy of the disk as it was."""
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 16 * MiB, seed=5, jobs=1)
    points = []
    for n in range(rounds):
        if n:
            testdisk.mutate_disk(image, 4, seed=n, jobs=1)
        point = run_backup(ctx, "web", [DiskSpec("os", str(image))])
        kept = tmp_path / f"as-of-{n}.img"
        shutil.copyfile(image, kept)
        points.append((point, kept))
    return points


def _ctx(tmp_path: Path, where: str) -> Context:
    return Context(where, f"sqlite:///{tmp_path / 'catalog.db'}")


def test_a_copy_restores_every_point_when_the_vault_is_gone(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, str(tmp_path / "vault"))
    init_vault(ctx)
    history = _history(tmp_path, ctx)
    copy_dir = tmp_path / "copy"

    first = run_replicate(ctx, str(copy_dir))
    assert first.copied == [p["id"] for p, _ in history]
    assert first.packs > 0 and first.verified_chunks > 0 and not first.skipped
    again = run_replicate(ctx, str(copy_dir))  # nothing new: nothing sent
    assert again.copied == [] and again.present == 3 and again.packs == 0 and again.bytes == 0

    # An incremental replication sends the new point's new data only.
    image = tmp_path / "disk.img"
    testdisk.mutate_disk(image, 2, seed=9, jobs=1)
    newest = run_backup(ctx, "web", [DiskSpec("os", str(image))])
    shutil.copyfile(image, tmp_path / "as-of-3.img")
    history.append((newest, tmp_path / "as-of-3.img"))
    third = run_replicate(ctx, str(copy_dir))
    assert third.copied == [newest["id"]]
    assert 0 < third.bytes < first.bytes / 2

    copy = Vault.open(open_backend(str(copy_dir)), PASSPHRASE, load_index=False)
    assert (
        copy.config.vault_id
        != Vault.open(
            open_backend(str(tmp_path / "vault")), PASSPHRASE, load_index=False
        ).config.vault_id
    )
    origin = replica_doc(copy)
    assert origin is not None and origin["last_success"]

    shutil.rmtree(tmp_path / "vault")  # the vault's site is lost
    copy_ctx = _ctx(tmp_path, str(copy_dir))
    assert run_check(copy_ctx, read_data=True).ok
    for point, as_it_was in history:
        target = tmp_path / f"restored-{point['id']}.img"
        run_restore(copy_ctx, point["id"], str(target))
        assert same_content(as_it_was, target)


def test_a_copy_with_its_own_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path, str(tmp_path / "vault"))
    init_vault(ctx)
    point, image = _history(tmp_path, ctx, rounds=1)[0]
    monkeypatch.setenv("VMVAULT_COPY_PASSPHRASE", "the copy's own")
    run_replicate(ctx, str(tmp_path / "copy"))
    with pytest.raises(WrongPassphrase):  # the vault's passphrase does not open the copy
        Vault.open(open_backend(str(tmp_path / "copy")), PASSPHRASE)
    copy = Vault.open(open_backend(str(tmp_path / "copy")), "the copy's own")
    assert copy.point_ids() == [point["id"]]
    assert run_replicate(ctx, str(tmp_path / "copy")).present == 1  # reopened with its own

    key_file = tmp_path / "copy.key"
    key_file.write_text("the copy's own\n")
    out = tmp_path / "out.img"
    done = run_cli(
        "restore", point["id"][:12], str(out), "--from", str(tmp_path / "copy"),
        "--passphrase-file", str(key_file), "--catalog", f"sqlite:///{tmp_path / 'c.db'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert same_content(image, out)


def test_another_vault_or_the_vault_itself_is_refused(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, str(tmp_path / "vault"))
    init_vault(ctx)
    _history(tmp_path, ctx, rounds=1)
    other = _ctx(tmp_path, str(tmp_path / "other"))
    init_vault(other)
    before = sorted(p.name for p in (tmp_path / "other").rglob("*"))
    with pytest.raises(UsageError, match="another vault"):
        run_replicate(ctx, str(tmp_path / "other"))
    assert sorted(p.name for p in (tmp_path / "other").rglob("*")) == before
    with pytest.raises(UsageError, match="somewhere else"):
        run_replicate(ctx, str(tmp_path / "vault"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        run_replicate(ctx, str(tmp_path / "busy"))
    # A FIFO (or any file) as the destination: refused before anything opens it, so
    # nothing blocks on a pipe no one writes to.
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UsageError, match="not a directory"):
        run_replicate(ctx, str(tmp_path / "pipe"))
    (tmp_path / "pipes").mkdir()
    os.mkfifo(tmp_path / "pipes" / "p")
    with pytest.raises(UsageError, match="not empty"):
        run_replicate(ctx, str(tmp_path / "pipes"))


def test_an_interrupted_replication_resumes_and_reuses_what_it_sent(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, str(tmp_path / "vault"))
    init_vault(ctx, pack_target=1 * MiB)  # many packs, so the copy can stop half-way
    history = _history(tmp_path, ctx, rounds=1)

    def backends(where: str) -> Backend:
        if where.endswith("copy"):
            faulty = FaultyBackend(LocalBackend(where), seed=1)
            # The store fills up after the first pack crossed: every later put fails.
            faulty.inject("put", "packs/", "enospc", skip=1, times=10_000)
            return RetryingBackend(faulty)
        return open_backend(where)

    broken = Context(ctx.vault_path, ctx.catalog_url, backend_factory=backends)
    with pytest.raises(VmvaultError):
        run_replicate(broken, str(tmp_path / "copy"))
    copy_backend = open_backend(str(tmp_path / "copy"))
    assert list(copy_backend.list("points/")) == []  # no point without all its objects
    sent = list(copy_backend.list("packs/"))
    assert sent  # some packs made it before the failure

    resumed = run_replicate(ctx, str(tmp_path / "copy"))
    assert resumed.adopted == len(sent)  # indexed again, not sent again
    assert resumed.copied == [history[0][0]["id"]]
    assert run_check(_ctx(tmp_path, str(tmp_path / "copy")), read_data=True).ok


def test_a_damaged_point_is_named_and_the_others_still_cross(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, str(tmp_path / "vault"))
    init_vault(ctx)
    image = tmp_path / "a.img"
    testdisk.create_disk(image, 8 * MiB, seed=11, jobs=1)
    good = run_backup(ctx, "a", [DiskSpec("os", str(image))])
    other = tmp_path / "b.img"
    testdisk.create_disk(other, 8 * MiB, seed=12, jobs=1)
    bad = run_backup(ctx, "b", [DiskSpec("os", str(other))])
    vault = Vault.open(open_backend(ctx.vault_path), PASSPHRASE)
    # Break a data pack only b's point uses: its name no longer matches its bytes.
    a_packs = _packs_of(vault, good)
    victim = next(p for p in sorted(_packs_of(vault, bad) - a_packs))
    path = tmp_path / "vault" / pack_key(victim)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))

    result = run_cli(
        "vault", "replicate", "--to", str(tmp_path / "copy"), "--vault", ctx.vault_path,
        "--catalog", ctx.catalog_url or "", "--json",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["copied"] == [good["id"]]
    assert list(doc["skipped"]) == [bad["id"]]
    copy = Vault.open(open_backend(str(tmp_path / "copy")), PASSPHRASE)
    assert copy.point_ids() == [good["id"]]
    assert not copy.backend.exists(pack_key(victim))  # damage is not copied


def _packs_of(vault: Vault, point: RecoveryPoint) -> set[bytes]:
    packs = set()
    for disk in point["disks"]:
        records = [r for r in vault.get_manifest(disk["manifest"]).records if any(r)]
        for rid, ids in vault.records(records).items():
            assert not isinstance(ids, Exception)
            packs.add(vault.index.get(rid).pack_id)  # type: ignore[union-attr]
            packs.update(vault.index.get(c).pack_id for c in ids if any(c))  # type: ignore[union-attr]
    return packs


@pytest.mark.s3
def test_replication_to_s3_and_restore_from_it(s3_vault: S3Vault, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, str(tmp_path / "vault"))
    init_vault(ctx)
    history = _history(tmp_path, ctx, rounds=2)
    url = s3_vault.url("offsite")
    env = {
        **s3_vault.server.env(),
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_CATALOG": ctx.catalog_url or "",
    }
    done = run_cli("vault", "replicate", "--to", url, "--vault", ctx.vault_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "2 point(s) copied" in done.stdout
    shutil.rmtree(tmp_path / "vault")
    for point, as_it_was in history:
        out = tmp_path / f"from-s3-{point['id']}.img"
        restored = run_cli("restore", point["id"], str(out), "--from", url, env=env)
        assert restored.returncode == 0, restored.stderr
        assert same_content(as_it_was, out)
    checked = run_cli("check", "--vault", url, "--read-data", "--json", env=env)
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"], checked.stdout


def _inventory(tmp_path: Path, image: Path, extra: str = "") -> Path:
    path = tmp_path / "inv.toml"
    path.write_text(
        f"""
[policies.short]
schedule = {{ kind = "daily", time = "22:00" }}
retention = {{ daily_days = 1 }}

[[vms]]
name = "web"
policy = "short"
  [[vms.disks]]
  name = "os"
  path = "{image}"

[replication.offsite]
to = "{tmp_path / "offsite"}"
start = "01:00"
window_hours = 4
{extra}
"""
    )
    return path


def test_the_scheduler_replicates_in_the_window_after_the_backups(
    tmp_path: Path, ctx: Context
) -> None:
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 8 * MiB, seed=21, jobs=1)
    inventory = load_inventory(_inventory(tmp_path, image))
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id)
    state = SchedulerState()
    night = datetime(2026, 11, 21, 0, 30, tzinfo=UTC)
    assert tick(queue, inventory, state, night) == []  # before the window opens
    backup = queue.enqueue(JobKind.BACKUP, "web", {"due": night.isoformat()}, now=night)
    in_window = night + timedelta(hours=1)
    assert tick(queue, inventory, state, in_window) == []  # a backup is still to run
    assert run_worker(ctx, inventory, once=True, poll=0.05) == [backup]
    [replication] = tick(queue, inventory, state, in_window + timedelta(minutes=5))
    job = queue.get(replication)
    assert job.kind == "replicate" and job.spec["copy"] == "offsite"
    assert tick(queue, inventory, state, in_window + timedelta(minutes=10)) == []  # once
    # Another scheduler on the same catalog (a server beside a CLI scheduler) agrees.
    assert tick(queue, inventory, SchedulerState(), in_window + timedelta(minutes=15)) == []

    assert run_worker(ctx, inventory, once=True, poll=0.05) == [replication]
    done = queue.get(replication)
    assert done.state == "succeeded", done.error_message
    assert len(done.details["copied"]) == 1 and done.details["retention"]["pruned"] == 0
    copy = Vault.open(open_backend(str(tmp_path / "offsite")), PASSPHRASE, load_index=False)
    assert copy.point_ids() == ctx.open_vault(load_index=False).point_ids()
    assert [j.id for j in replication_jobs(ctx.catalog(), vault_id)] == [replication]
    [status] = copies_status(ctx.catalog(), vault_id, inventory)
    assert status["name"] == "offsite" and status["destination"] == str(tmp_path / "offsite")
    assert status["last_success"] and status["last_run"]["state"] == "succeeded"
    assert status["points_waiting"] == 0 and status["lag_seconds"] == 0
    run_backup(ctx, "web", [DiskSpec("os", str(image))])  # a point the copy lacks
    [behind] = copies_status(ctx.catalog(), vault_id, inventory)
    assert behind["points_waiting"] == 1 and behind["lag_seconds"] > 0
    # The next night's window queues the next replication.
    [tomorrow] = tick(queue, inventory, state, in_window + timedelta(days=1))
    assert tomorrow != replication


def test_the_copy_keeps_by_its_own_retention_and_pruned_points_stay_out(
    tmp_path: Path, ctx: Context
) -> None:
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 8 * MiB, seed=22, jobs=1)
    points = []
    for n in range(3):
        testdisk.mutate_disk(image, 3, seed=n, jobs=1)
        points.append(run_backup(ctx, "web", [DiskSpec("os", str(image))]))
    inventory = _inventory(tmp_path, image)
    base = ("vault", "replicate", "--to", str(tmp_path / "offsite"), "--vault", ctx.vault_path,
            "--catalog", ctx.catalog_url or "", "-i", str(inventory), "--json")  # fmt: skip
    stray = run_cli(*base, "--policy", "short")
    assert stray.returncode == 2 and "--prune" in stray.stdout  # the JSON error
    first = run_cli(*base, "--prune", "--policy", "short")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert len(doc["copied"]) == 3
    # Today's points are all kept for instant restore (2 days), by the copy as by the vault.
    assert doc["retention"]["pruned"] == 0 and "gc" in doc["retention"]

    # Ten days on, the copy's retention (one day) removes them; the vault keeps its own.
    copy_ctx = Context(str(tmp_path / "offsite"), ctx.catalog_url)
    later = datetime.now(UTC) + timedelta(days=10)
    run_prune(copy_ctx, load_inventory(inventory), now=later)
    copy = Vault.open(open_backend(str(tmp_path / "offsite")), PASSPHRASE, load_index=False)
    kept = copy.point_ids()
    assert len(kept) < 3
    forget_point(copy_ctx, kept[0])  # by hand, too
    assert copy.point_ids() == kept[1:]
    assert len(ctx.open_vault(load_index=False).point_ids()) == 3
    again = run_cli(*base)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["copied"] == []  # what the copy removed stays out
    assert copy.point_ids() == kept[1:]


@pytest.mark.s3
def test_a_restore_from_the_copy_with_read_only_credentials(
    s3_vault: S3Vault, tmp_path: Path
) -> None:
    ctx = _ctx(tmp_path, str(tmp_path / "vault"))
    init_vault(ctx)
    [(point, as_it_was)] = _history(tmp_path, ctx, rounds=1)
    url = s3_vault.url("offsite")
    assert run_replicate(ctx, url).copied == [point["id"]]
    shutil.rmtree(tmp_path / "vault")
    reader = {
        **s3_vault.server.env(),
        "AWS_ACCESS_KEY_ID": READER_KEY,
        "AWS_SECRET_ACCESS_KEY": READER_SECRET,
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_CATALOG": ctx.catalog_url or "",
    }
    out = tmp_path / "restored.img"
    done = run_cli("restore", "latest", str(out), "--from", url, env=reader)
    assert done.returncode == 0, done.stderr
    assert same_content(as_it_was, out)
    assert "without a lock" in done.stderr  # the lock could not be written: said once
    # A copy of the copy cannot be made with them: one clear line, nothing written.
    other = s3_vault.url("other")
    refused = run_cli("vault", "replicate", "--vault", url, "--to", other, env=reader)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].startswith("error:"), refused.stderr
    assert "Traceback" not in refused.stderr
    assert list(open_backend(other).list()) == []
