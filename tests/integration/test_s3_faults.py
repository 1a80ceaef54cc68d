"""An S3 vault whose store fails: requests refused (503 SlowDown) or cut (connections reset
half-way through a request or its answer), the store down for longer than the retries last,
the store killed mid-backup and started again.

The store is SeaweedFS (tests/support/s3kit.py) behind a real HTTP proxy that injects the
faults (tests/support/faultproxy.py): vmvault's whole stack runs as in production, boto3
and the retry layer included. What must hold: a backup either succeeds, and its point
restores byte-identical, or fails with one error and writes no point; earlier points stay
intact; a backup after an interrupted one reuses the packs that reached the store.
"""

from __future__ import annotations

import http.client
import random
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.config import Config
from sqlalchemy import update

from support.cli import PASSPHRASE, run_cli, same_content
from support.faultproxy import FAULTS, Seen
from support.s3kit import KillableS3Vault, ProxiedS3Vault
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore
from vmvault.app.vaults import init_vault, run_check
from vmvault.backends.url import open_backend
from vmvault.catalog.models import Job
from vmvault.errors import VmvaultError
from vmvault.inventory import parse_inventory
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.worker import run_worker

pytestmark = pytest.mark.s3
MiB = testdisk.MiB
FAST_SCRYPT = {"n": 2**10, "r": 8, "p": 1}  # the key file's cost is not under test here


def _ctx(vault: ProxiedS3Vault, tmp_path: Path) -> Context:
    return Context(vault.url(), f"sqlite:///{tmp_path / 'catalog.db'}")


def _cli_env(vault: ProxiedS3Vault, ctx: Context) -> dict[str, str]:
    return {
        **vault.server.env(),  # the proxy's endpoint
        "VMVAULT_VAULT": ctx.vault_path,
        "VMVAULT_CATALOG": str(ctx.catalog_url),
        "VMVAULT_PASSPHRASE": PASSPHRASE,
    }


def _pack_puts(seen: list[Seen]) -> list[Seen]:
    """Pack uploads the store took and answered in full."""
    return [s for s in seen if s.method == "PUT" and "/packs/" in s.path and s.ok]


def test_the_proxy_keeps_signatures_valid(s3_proxy_vault: ProxiedS3Vault) -> None:
    """Requests pass the proxy unchanged: SigV4 signs the Host header, the store checks it
    (a Host changed on the way is refused), and vmvault's signed requests get through."""
    vault = s3_proxy_vault
    backend = open_backend(vault.url())
    backend.put("packs/ab/ab01", b"x" * (3 * MiB))  # a body boto3 sends in one request
    backend.create("points/p1", b"point")
    assert backend.get("packs/ab/ab01", 5, 10) == b"x" * 10
    assert backend.size("packs/ab/ab01") == 3 * MiB
    assert sorted(backend.list()) == ["packs/ab/ab01", "points/p1"]
    assert vault.proxy.counts == {"PUT": 2, "GET": 2, "HEAD": 1}
    assert all(s.ok for s in vault.proxy.seen())

    import boto3

    signer = boto3.session.Session().client("s3", config=Config(signature_version="s3v4"))
    url = signer.generate_presigned_url(
        "get_object", Params={"Bucket": vault.bucket, "Key": "vault/points/p1"}
    )
    host, _, path = url.removeprefix("http://").partition("/")
    answers = {}
    for sent_host in (host, "127.0.0.1:1"):
        conn = http.client.HTTPConnection(*host.split(":"))
        conn.request("GET", f"/{path}", headers={"Host": sent_host})
        answer = conn.getresponse()
        answers[sent_host] = (answer.status, answer.read())
        conn.close()
    assert answers[host] == (200, b"point")
    assert answers["127.0.0.1:1"][0] == 403
    assert b"SignatureDoesNotMatch" in answers["127.0.0.1:1"][1]


def test_every_seventh_request_failing(s3_proxy_vault: ProxiedS3Vault, tmp_path: Path) -> None:
    """Every 7th request refused with 503 or cut half-way (before the store saw it, or after
    it acted on it): init, a full and an incremental backup, restores, check all succeed."""
    vault = s3_proxy_vault
    vault.proxy.fail_every(7, *FAULTS)
    ctx = _ctx(vault, tmp_path)
    # Small blocks and packs: many objects, many requests.
    init_vault(ctx, pack_target=256 * 1024, block_size=1 * MiB, scrypt=FAST_SCRYPT)
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 24 * MiB, seed=11, jobs=1)
    full = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    first = tmp_path / "first.img"
    first.write_bytes(image.read_bytes())
    testdisk.mutate_disk(image, 5, seed=12, jobs=1)
    incremental = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    assert full["type"] == "full"
    assert incremental["type"] == "incremental" and incremental["parent"] == full["id"]

    for point, expected in ((full, first), (incremental, image)):
        out = tmp_path / f"restored-{point['id']}.img"
        run_restore(ctx, point["id"], str(out))
        assert same_content(expected, out)
    report = run_check(ctx, read_data=True)
    assert report.ok, [p.message for p in report.problems]

    seen = vault.proxy.seen()
    faulted = [s for s in seen if s.fault is not None]
    assert len(faulted) == len(seen) // 7 >= 30
    assert {s.fault for s in faulted} == set(FAULTS)
    assert {s.method for s in faulted} >= {"GET", "PUT"}


def test_lost_answers_to_uploads(s3_proxy_vault: ProxiedS3Vault, tmp_path: Path) -> None:
    """Every 3rd PUT is done by the store, but its answer is cut half-way: the retried
    creation of a pack, an index object or the point meets its own object and takes it;
    nothing is stored twice and nothing is left behind."""
    vault = s3_proxy_vault
    ctx = _ctx(vault, tmp_path)
    init_vault(ctx, pack_target=256 * 1024, block_size=1 * MiB, scrypt=FAST_SCRYPT)
    vault.proxy.fail_every(3, "reset-response", methods=["PUT"])
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 16 * MiB, seed=13, jobs=1)
    point = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    lost = [s for s in vault.proxy.seen("PUT") if s.fault == "reset-response"]
    assert any("/packs/" in s.path for s in lost)
    # The store did each of them; a retry may have its own answer lost too: the store
    # then refused it (412) for the object the first attempt had stored.
    done = {s.path for s in lost if s.status == 200}
    assert all(s.status == 200 or (s.status == 412 and s.path in done) for s in lost)

    out = tmp_path / "restored.img"
    run_restore(ctx, point["id"], str(out))
    assert same_content(image, out)
    report = run_check(ctx, read_data=True)
    assert report.ok, [p.message for p in report.problems]
    stored = {
        item["Key"].removeprefix("vault/")
        for page in vault.client.get_paginator("list_objects_v2").paginate(Bucket=vault.bucket)
        for item in page.get("Contents", ())
    }
    uploaded = {s.path.split("/vault/", 1)[1] for s in vault.proxy.seen("PUT")}
    assert {k for k in stored if k.startswith("packs/")} == {
        k for k in uploaded if k.startswith("packs/")
    }
    assert [k for k in stored if k.startswith("points/")] == [f"points/{point['id']}"]
    assert not [k for k in stored if k.startswith("locks/")]


def test_store_down_fails_the_backup_with_one_line(
    s3_proxy_vault: ProxiedS3Vault, tmp_path: Path
) -> None:
    """The store stops answering mid-backup for longer than the retries last: the CLI
    prints one error line (no traceback) and exits non-zero; no point is written, the
    earlier one restores, and once the store is back the vault checks clean."""
    vault = s3_proxy_vault
    ctx = _ctx(vault, tmp_path)
    init_vault(ctx, pack_target=1 * MiB, scrypt=FAST_SCRYPT)
    first_image = tmp_path / "first.img"
    testdisk.create_disk(first_image, 8 * MiB, seed=21, jobs=1)
    first = run_backup(ctx, "vm", [DiskSpec("os", str(first_image))])

    image = tmp_path / "second.img"
    testdisk.create_disk(image, 32 * MiB, seed=22, jobs=1)
    vault.proxy.reset_counts()

    def down_after_three_packs(seen: Seen) -> None:
        if len(_pack_puts(vault.proxy.seen("PUT"))) >= 3:
            vault.proxy.down()

    vault.proxy.on_forwarded = down_after_three_packs
    result = run_cli(
        "backup", str(image), "--vm", "vm", "--disk-name", "os", env=_cli_env(vault, ctx)
    )
    assert vault.proxy.is_down
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the vault's storage (s3://")
    assert "kept failing" in lines[0]

    vault.proxy.on_forwarded = None
    vault.proxy.up()
    assert ctx.open_vault().point_ids() == [first["id"]]
    out = tmp_path / "first-restored.img"
    run_restore(ctx, first["id"], str(out))
    assert same_content(first_image, out)
    report = run_check(ctx, read_data=True)
    assert report.ok, [p.message for p in report.problems]
    jobs = ctx.catalog().jobs(ctx.open_vault().config.vault_id)
    backups = [(j.state, j.error_code) for j in jobs if j.kind == "backup"]
    assert backups == [("failed", "backend_unavailable"), ("succeeded", None)]


def test_a_queued_backup_the_store_fails_is_retried_once_it_is_back(
    s3_proxy_vault: ProxiedS3Vault, tmp_path: Path
) -> None:
    """A scheduled backup that meets a store outage longer than the backend's own retries is
    a transient failure of the job: queued again after a backoff (not failed with an
    alert), and run again once the store answers."""
    vault = s3_proxy_vault
    ctx = _ctx(vault, tmp_path)
    init_vault(ctx, pack_target=1 * MiB, scrypt=FAST_SCRYPT)
    image = tmp_path / "disk.img"
    testdisk.create_disk(image, 8 * MiB, seed=41, jobs=1)
    inventory = parse_inventory(
        f'[[vms]]\nname = "vm"\nstate = "stopped"\n[[vms.disks]]\nname = "os"\npath = "{image}"\n',
        "inv.toml",
    )
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id)
    job_id = queue.enqueue("backup", "vm")

    def down_at_the_first_pack(seen: Seen) -> None:
        if _pack_puts(vault.proxy.seen("PUT")):
            vault.proxy.down()

    vault.proxy.reset_counts()
    vault.proxy.on_forwarded = down_at_the_first_pack  # the store goes away mid-job
    run_worker(ctx, inventory, once=True, poll=0.05)
    assert vault.proxy.is_down
    vault.proxy.on_forwarded = None
    job = queue.get(job_id)
    assert (job.state, job.error_code, job.attempts) == ("queued", "backend_unavailable", 1)
    assert job.not_before is not None and job.not_before > datetime.now(UTC)

    vault.proxy.up()
    with queue.catalog.session.begin() as s:  # the backoff is over
        s.execute(update(Job).where(Job.id == job_id).values(not_before=datetime.now(UTC)))
    run_worker(ctx, inventory, once=True, poll=0.05)
    job = queue.get(job_id)
    assert (job.state, job.attempts) == ("succeeded", 2), job.error_message
    assert ctx.open_vault(load_index=False).point_ids() == [job.point_id]


def test_store_killed_mid_backup_then_the_next_backup_adopts_its_packs(
    killable_s3_vault: KillableS3Vault, tmp_path: Path
) -> None:
    """SeaweedFS is killed (SIGKILL) once a few packs of a backup are stored: the backup
    fails with one error and writes no point. The store is started again on its data; the
    next backup adopts the packs that had reached it and uploads only the rest."""
    vault = killable_s3_vault
    ctx = _ctx(vault, tmp_path)
    # 1 MiB blocks and packs: about a pack per MiB of new data.
    init_vault(ctx, pack_target=1 * MiB, block_size=1 * MiB, scrypt=FAST_SCRYPT)
    small = tmp_path / "small.img"
    testdisk.create_disk(small, 4 * MiB, seed=31, jobs=1)
    first = run_backup(ctx, "vm", [DiskSpec("os", str(small))])

    image = tmp_path / "big.img"
    image.write_bytes(random.Random(32).randbytes(32 * MiB))  # incompressible: ~32 packs
    stored_before_kill = 8
    killed = threading.Event()
    kill_lock = threading.Lock()

    def kill_after_some_packs(seen: Seen) -> None:
        with kill_lock:
            stored = len(_pack_puts(vault.proxy.seen("PUT")))
            if not killed.is_set() and stored >= stored_before_kill:
                vault.weed.kill()
                killed.set()

    vault.proxy.reset_counts()
    vault.proxy.on_forwarded = kill_after_some_packs
    with pytest.raises(VmvaultError) as raised:
        run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    assert killed.is_set()
    assert raised.value.code == "backend_unavailable", raised.value.message
    acknowledged = len(_pack_puts(vault.proxy.seen("PUT")))
    vault.proxy.on_forwarded = None

    vault.weed.start()  # the same data directory and ports
    vault_now = ctx.open_vault()
    assert vault_now.point_ids() == [first["id"]]
    orphans = vault_now.adopt_orphan_packs(write=False)
    assert orphans >= acknowledged >= stored_before_kill

    vault.proxy.reset_counts()
    rerun = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    resumed = _pack_puts(vault.proxy.seen("PUT"))

    # What a full backup of the same disk uploads, counted the same way: a fresh vault.
    reference_ctx = Context(vault.url("reference"), f"sqlite:///{tmp_path / 'ref.db'}")
    init_vault(reference_ctx, pack_target=1 * MiB, block_size=1 * MiB, scrypt=FAST_SCRYPT)
    vault.proxy.reset_counts()
    run_backup(reference_ctx, "vm", [DiskSpec("os", str(image))])
    full = _pack_puts(vault.proxy.seen("PUT"))
    # The packs stored before the kill are not uploaded again: their chunks count as
    # already in the vault (adopted), and the uploads are a full backup's less theirs.
    assert rerun["disks"][0]["stats"]["deduplicated"] >= (acknowledged - 1) * MiB
    assert len(resumed) <= len(full) - acknowledged + 1
    assert sum(s.body for s in resumed) < sum(s.body for s in full) - (acknowledged - 1) * MiB

    for point, expected in ((first, small), (rerun, image)):
        out = tmp_path / f"restored-{point['id']}.img"
        run_restore(ctx, point["id"], str(out))
        assert same_content(expected, out)
    report = run_check(ctx, read_data=True)
    assert report.ok, [p.message for p in report.problems]
