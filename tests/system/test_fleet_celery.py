"""A fleet on a real Redis (started by the tests): jobs sent through Celery to `vmvault
worker --host` processes, a SIGKILLed worker's job delivered again, fleet-wide admission
and a pool's egress budget shared by two processes, the Lua admission against ``admit``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from support.cli import run_cli
from support.fleetkit import (
    CLI,
    TIMINGS,
    Fleet,
    disk_image,
    peak_overlap,
    vm_entry,
    write_file,
)
from support.serverkit import make_site, serving
from vmvault.app.context import Context
from vmvault.catalog.models import Job
from vmvault.cluster.broker import Sweeper, queue_for
from vmvault.cluster.redis_limits import RedisGate, RedisPoolBudget
from vmvault.cluster.settings import FleetSettings
from vmvault.cluster.worker import FleetWorker
from vmvault.inventory import parse_inventory
from vmvault.jobs.admission import JobLoad, Limits, admit
from vmvault.jobs.gate import LocalGate
from vmvault.jobs.queue import JobQueue

pytestmark = pytest.mark.redis


@pytest.fixture
def fleet(ctx: Context, redis_url: str, tmp_path: Path) -> Iterator[Callable[[Path], Fleet]]:
    made: list[Fleet] = []

    def make(inventory: Path) -> Fleet:
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        made.append(Fleet(ctx, redis_url, inventory, logs))
        return made[-1]

    yield make
    for f in made:
        f.stop()


# -- routing ----------------------------------------------------------------------------


def test_a_job_runs_on_its_host_s_worker_and_shared_jobs_on_any(
    ctx: Context, tmp_path: Path, fleet: Callable[[Path], Fleet]
) -> None:
    images = {n: disk_image(tmp_path, n, 4, seed) for seed, n in enumerate(["a", "b", "c"], 1)}
    inventory = write_file(
        tmp_path / "inventory.toml",
        vm_entry("vm1", "hv1", [("os", images["a"], None)])
        + vm_entry("vm2", "hv2", [("os", images["b"], None)])
        + vm_entry("vm3", "hv3", [("os", images["c"], None)]),
    )
    f = fleet(inventory)
    f.worker("hv1")
    f.worker("hv2")
    queued = run_cli("jobs", "run-now", "vm1", "--json", env=f.env)  # the CLI sends it too
    assert queued.returncode == 0, queued.stderr
    first = int(json.loads(queued.stdout)["id"])
    second = f.queue.enqueue("backup", "vm2")
    orphan = f.queue.enqueue("backup", "vm3")  # no worker on hv3: nobody else takes it
    jobs = f.wait([first, second])
    assert [j.state for j in jobs] == ["succeeded", "succeeded"], f.log()
    assert str(jobs[0].worker).startswith("hv1/") and str(jobs[1].worker).startswith("hv2/")
    verify = f.queue.enqueue("verify", "vm1", {"point": "latest"}, max_attempts=1)
    [verified] = f.wait([verify])
    assert verified.state == "succeeded", (verified.error_message, f.log())
    assert str(verified.worker).split("/")[0] in ("hv1", "hv2")  # the shared queue
    assert f.queue.get(orphan).state == "queued"  # hv1's and hv2's workers left it
    once = run_cli("scheduler", "--once", env=f.env)  # with a broker it runs no job itself
    assert once.returncode == 0, once.stderr
    assert f.queue.get(orphan).state == "queued"
    assert f.queue.cancel(orphan) == "cancelled"


def test_the_queue_of_each_kind_of_job() -> None:
    inventory = parse_inventory(
        '[[vms]]\nname = "web"\nhost = "hv7"\n  [[vms.disks]]\n  name = "os"\n  path = "/x"\n',
        "inv.toml",
    )
    assert queue_for(inventory, "backup", "web") == "vmvault.host.hv7"
    assert queue_for(inventory, "restore", "web") == "vmvault.host.hv7"
    assert queue_for(inventory, "verify", "web") == "vmvault.any"
    assert queue_for(inventory, "maintenance", "") == "vmvault.any"
    assert queue_for(inventory, "backup", "gone") == "vmvault.any"  # fails there, named


# -- a worker lost mid-backup -------------------------------------------------------------


def test_a_sigkilled_worker_s_job_is_delivered_again_and_finished_by_another(
    ctx: Context, tmp_path: Path, fleet: Callable[[Path], Fleet], redis_url: str
) -> None:
    image = disk_image(tmp_path, "disk", 8, 3)
    vm = vm_entry("vm", "hv1", [("os", image, None)])
    throttled = "[limits]\ndisk_mb_per_s = 0.3\n\n" + vm
    inventory = write_file(tmp_path / "inventory.toml", throttled)
    f = fleet(inventory)
    doomed = f.worker("hv1")
    job_id = f.queue.enqueue("backup", "vm")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = f.queue.get(job_id)
        done = sum(d.get("done", 0) for d in (job.progress or {}).values())
        if job.state == "running" and done > 0:
            break
        assert doomed.poll() is None, f.log()
        time.sleep(0.1)
    else:
        raise AssertionError(f"the worker never got going\n{f.log()}")
    lost = str(f.queue.get(job_id).worker)
    f.worker("hv1")  # another worker of the host (the job's message is the first's)
    time.sleep(1.0)  # a pack or two uploaded: the next attempt adopts them
    doomed.kill()
    doomed.wait(timeout=10)
    gate = RedisGate(redis.Redis.from_url(redis_url), f.vault_id, Limits, 3.0)
    assert [load.vm for load in gate.held()] == ["vm"]  # the dead worker's lease, for now
    write_file(inventory, vm)  # unthrottled from now on (the workers reload the file)

    [job] = f.wait([job_id], timeout=60)
    assert job.state == "succeeded", (job.error_message, f.log())
    assert job.worker != lost and str(job.worker).startswith("hv1/")
    assert (job.attempts, job.error_code) == (2, "worker_lost")
    assert gate.held() == []  # the dead lease expired, the second one was released
    env = {"VMVAULT_VAULT": ctx.vault_path, "VMVAULT_CATALOG": str(ctx.catalog_url)}
    target = tmp_path / "restored.img"
    restore = run_cli("restore", str(job.point_id), str(target), env=env)
    assert restore.returncode == 0, restore.stderr
    assert target.read_bytes() == image.read_bytes()
    check = run_cli("check", env=env)
    assert check.returncode == 0, check.stdout + check.stderr


# -- fleet-wide admission -----------------------------------------------------------------


def test_workers_together_never_exceed_max_vms_nor_a_pool_s_disks(
    ctx: Context, tmp_path: Path, fleet: Callable[[Path], Fleet], redis_url: str
) -> None:
    text = "[limits]\ndisk_mb_per_s = 6\nmax_vms = 3\nmax_disks_per_pool = 3\n\n"
    text += "[pools.a]\n[pools.b]\n\n"
    two_disk_vms = set()
    for i in range(9):
        if i % 3 == 0:  # two disks on pool b: at most one such VM at a time (2 + 2 > 3)
            disks = [
                (d, disk_image(tmp_path, f"vm{i}{d}", 2, 10 * i + n), "b")
                for n, d in enumerate("xy")
            ]
            two_disk_vms.add(f"vm{i}")
        else:
            disks = [("x", disk_image(tmp_path, f"vm{i}x", 3, 10 * i), "a")]
        text += vm_entry(f"vm{i}", "hv1" if i % 2 else "hv2", disks)
    inventory = write_file(tmp_path / "inventory.toml", text)
    f = fleet(inventory)
    for host in ("hv1", "hv1", "hv2"):  # three workers, each could run 3 at once
        f.worker(host)
    ids = [f.queue.enqueue("backup", f"vm{i}") for i in range(9)]
    jobs = f.wait(ids, timeout=90)
    assert {j.state for j in jobs} == {"succeeded"}, f.log()

    assert peak_overlap(jobs) <= 3
    assert peak_overlap(jobs, lambda j: 2 if j.vm in two_disk_vms else 0) <= 2  # pool b
    gate = RedisGate(redis.Redis.from_url(redis_url), f.vault_id, Limits, 3.0)
    peaks = gate.peaks()
    assert peaks["vms"] == 3  # the limit was reached, never passed
    assert peaks["pool:b"] == 2 and peaks["pool:a"] <= 3
    assert any((j.queue_wait or 0) > 0.5 for j in jobs)  # waits are recorded
    assert gate.held() == []


def test_a_dead_worker_s_lease_expires_and_a_renewed_one_does_not(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    gate = RedisGate(client, "v", lambda: Limits(max_vms=1), ttl=0.6)
    assert gate.try_admit("1:a", JobLoad("vm1", {})) is None
    assert gate.try_admit("2:a", JobLoad("vm2", {})) == "1 VMs are backing up (at most 1 at once)"
    for _ in range(4):  # renewed: held past its first expiry
        time.sleep(0.3)
        gate.renew("1:a", JobLoad("vm1", {}))
        assert gate.try_admit("2:a", JobLoad("vm2", {})) is not None
    time.sleep(0.8)  # its worker died: no renewal
    assert gate.try_admit("2:a", JobLoad("vm2", {})) is None
    assert [load.vm for load in gate.held()] == ["vm2"]
    gate.release("2:a")
    assert gate.held() == []


_pools = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 6), max_size=3)
_loads = st.builds(JobLoad, st.sampled_from([f"vm{i}" for i in range(8)]), _pools)
_limits = st.builds(
    Limits,
    max_vms=st.integers(1, 6),
    max_disks_per_pool=st.integers(1, 10),
    pool_disk_caps=st.dictionaries(st.sampled_from(["a", "b"]), st.integers(1, 10)),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(running=st.lists(_loads, max_size=6), candidate=_loads, limits=_limits)
def test_the_lua_admission_and_the_local_gate_answer_as_admit_does(
    redis_url: str, running: list[JobLoad], candidate: JobLoad, limits: Limits
) -> None:
    """One rule set: Redis's script, the in-process gate and the planner's ``admit``
    agree on every answer, the reason included."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    redis_gate = RedisGate(client, "v", lambda: limits, ttl=60)
    local = LocalGate(limits, ttl=60)
    for n, load in enumerate(running):  # as admitted earlier, whatever the limits now
        for gate in (redis_gate, local):
            gate.renew(f"r{n}", load)
    expected = admit(running, candidate, limits)
    assert redis_gate.try_admit("c", candidate) == expected
    assert local.try_admit("c", candidate) == expected


# -- a pool's egress, shared ---------------------------------------------------------------


def test_two_workers_share_a_pool_s_egress_budget(
    ctx: Context, tmp_path: Path, fleet: Callable[[Path], Fleet]
) -> None:
    rate = 1.0  # MB/s for the pool, whoever reads it: well below what the CPU allows
    text = f"[pools.shared]\negress_mb_per_s = {rate}\n\n"
    for n, host in enumerate(("hv1", "hv2")):
        text += vm_entry(
            f"vm{n}", host, [("os", disk_image(tmp_path, f"d{n}", 8, n + 5), "shared")]
        )
    inventory = write_file(tmp_path / "inventory.toml", text)
    f = fleet(inventory)
    f.worker("hv1")
    f.worker("hv2")
    f.ready("hv1", "hv2")  # a worker still starting would let the other read alone
    jobs = f.wait([f.queue.enqueue("backup", f"vm{n}") for n in range(2)], timeout=90)
    assert {j.state for j in jobs} == {"succeeded"}, f.log()
    assert peak_overlap(jobs) == 2  # both read at once, from two processes
    begin = min(j.started_at for j in jobs if j.started_at)
    end = max(j.finished_at for j in jobs if j.finished_at)
    seconds = (end - begin).total_seconds()
    read = sum(j.bytes_read or 0 for j in jobs)
    burst = 4 * 1024 * 1024  # the bucket's start: read at once
    # Each process alone at the pool's rate would read about twice as fast together.
    assert (read - burst) / seconds <= 1.35 * rate * 1e6, (read, seconds)


def test_a_redis_bucket_paces_as_the_local_one(redis_url: str) -> None:
    budget = RedisPoolBudget(redis.Redis.from_url(redis_url), "v")
    egress, requests = budget.buckets("p", 2.0, 10.0)
    assert egress.rate == 2e6 and requests.rate == 10.0
    started = time.monotonic()
    for _ in range(6):
        egress.consume(1_000_000)  # 4 MiB of burst, then 2 MB/s
    assert 0.6 <= time.monotonic() - started <= 3.0


def test_the_embedded_queue_sends_nothing(ctx: Context) -> None:
    queue = JobQueue(ctx.catalog(), ctx.open_vault(load_index=False).config.vault_id)
    assert queue.dispatch is None
    assert queue.get(queue.enqueue("backup", "vm")).state == "queued"


# -- the API and the sweep ---------------------------------------------------------------


def test_serve_with_a_broker_sends_the_api_s_jobs_to_the_fleet(
    tmp_path: Path, redis_url: str
) -> None:
    """`vmvault serve --broker`: "back up now" queues the job in the catalog and sends it;
    the worker of the VM's host (the inventory's default, localhost) runs it; the API
    follows it in the catalog, as without a broker."""
    site = make_site(tmp_path / "site", backup=False)
    config = site.config
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMVAULT_")}
    env.update(TIMINGS)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [
                *CLI,
                "worker",
                "--broker",
                redis_url,
                "--vault",
                config.vault,
                "--catalog",
                str(config.catalog_url),
                "--inventory",
                str(config.inventory),
                "--passphrase-file",
                str(config.passphrase_file),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with serving(site, tmp_path / "serve.log", "--broker", redis_url) as served:
            answer = served.api("POST", "/api/v1/vms/web01/backup", "operator")
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job = served.get(f"/api/v1/jobs/{job_id}", "reader").json()
                if job["state"] in ("succeeded", "failed"):
                    break
                time.sleep(0.3)
            assert job["state"] == "succeeded", (job, log.read_text()[-3000:])
            assert job["worker"].startswith("localhost/")
            assert job["point_id"]
    finally:
        worker.terminate()
        worker.wait(timeout=20)


@pytest.mark.parametrize("kind", ["redis", "local"])
def test_one_task_at_a_time_waits_for_a_job_s_turn(redis_url: str, kind: str) -> None:
    limits = Limits()
    gate: RedisGate | LocalGate = (
        RedisGate(redis.Redis.from_url(redis_url), "v", lambda: limits, ttl=0.5)
        if kind == "redis"
        else LocalGate(limits, ttl=0.5)
    )
    assert not gate.waiting(7)
    assert gate.wait_turn(7, "a") and gate.wait_turn(7, "a")  # kept by its holder
    assert not gate.wait_turn(7, "b") and gate.waiting(7)
    gate.done_waiting(7, "b")  # not b's: stays
    assert gate.waiting(7)
    gate.done_waiting(7, "a")
    assert gate.wait_turn(7, "b")
    time.sleep(0.7)  # b's worker died: the mark expires with it
    assert not gate.waiting(7) and gate.wait_turn(7, "c")


def test_the_sweep_sends_again_a_due_job_whose_message_was_lost(ctx: Context) -> None:
    sent: list[tuple[int, float]] = []
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    queue = JobQueue(ctx.catalog(), vault_id, dispatch=lambda j, k, v, d: sent.append((j, d)))
    job_id = queue.enqueue("backup", "vm")
    assert sent == [(job_id, 0.0)]
    sweep = Sweeper(queue, FleetSettings("redis://x", resend_after=60))
    assert sweep(now=1000.0) == []  # just sent: not yet
    assert sweep(now=1059.0) == []
    assert sweep(now=1061.0) == [job_id]  # a minute queued after its message: again
    assert sent[-1] == (job_id, 0.0)
    waited = {job_id}
    sweep.waiting = lambda j: j in waited  # a worker's task waits for its turn
    assert sweep(now=1200.0) == []
    queue.cancel(job_id)
    assert sweep(now=2000.0) == []  # only queued jobs


def test_a_budget_whose_redis_is_gone_is_a_transient_error() -> None:
    from vmvault.cluster.redis_limits import FleetUnavailable

    port = _closed_port()
    budget = RedisPoolBudget(redis.Redis.from_url(f"redis://127.0.0.1:{port}/0"), "v")
    egress, _ = budget.buckets("p", 1.0, 1.0)
    with pytest.raises(FleetUnavailable) as caught:
        egress.consume(1)
    assert caught.value.transient  # the job is retried later, not failed


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_message_runs_its_job_once_and_is_a_no_op_for_a_job_not_queued(
    ctx: Context, tmp_path: Path
) -> None:
    """The task's logic in this process, with the in-process gate (the same caller as
    Redis's): a duplicate message, one for a running or finished job, does nothing; a job
    whose worker was reaped is claimable again."""
    image = disk_image(tmp_path, "disk", 4, 9)
    inventory = parse_inventory(vm_entry("vm", "hv1", [("os", image, None)]), "inv.toml")
    vault_id = ctx.open_vault(load_index=False).config.vault_id
    sent: list[tuple[int, float]] = []
    queue = JobQueue(ctx.catalog(), vault_id, dispatch=lambda j, k, v, d: sent.append((j, d)))
    gate = LocalGate(Limits(max_vms=1), ttl=5)
    settings = FleetSettings("redis://x", heartbeat=0.5)
    worker = FleetWorker(ctx, lambda: inventory, queue, gate, "hv1/test:1", settings)

    job_id = queue.enqueue("backup", "vm")
    assert worker.run(job_id) == "ran"
    job = queue.get(job_id)
    assert (job.state, job.worker, job.attempts) == ("succeeded", "hv1/test:1", 1)
    assert worker.run(job_id) == "not queued"  # the same message again: nothing
    assert queue.get(job_id).attempts == 1 and gate.held() == []
    assert worker.run(10_000) == "not queued"  # no such job

    other = queue.enqueue("backup", "vm")
    assert queue.claim_id(other, "hv1/dead:2") is not None  # a worker that then died
    assert worker.run(other) == "not queued"  # running elsewhere: left alone
    stale = datetime.now(UTC) + timedelta(minutes=5)
    [(_, outcome)] = queue.reap(now=stale)
    assert outcome == "queued" and sent[-1][0] == other and sent[-1][1] > 0  # sent again
    assert worker.run(other) == "not yet"  # its backoff first: sent again for then
    with queue.catalog.session.begin() as s:
        s.execute(update(Job).where(Job.id == other).values(not_before=None))
    assert worker.run(other) == "ran"
    assert queue.get(other).attempts == 2 and queue.get(other).state == "succeeded"

    # A duplicate message while the job waits for its place elsewhere: it ends at once.
    third = queue.enqueue("backup", "vm")
    assert gate.try_admit("busy", JobLoad("another", {})) is None  # the one VM place
    assert gate.wait_turn(third, "the first message")
    assert worker.run(third) == "waiting elsewhere"
    assert queue.get(third).state == "queued" and gate.waiting(third)


def test_a_worker_stopped_by_sigterm_hands_its_job_back_to_the_fleet(
    ctx: Context, tmp_path: Path, fleet: Callable[[Path], Fleet]
) -> None:
    image = disk_image(tmp_path, "disk", 8, 4)
    vm = vm_entry("vm", "hv1", [("os", image, None)])
    inventory = write_file(tmp_path / "inventory.toml", "[limits]\ndisk_mb_per_s = 0.3\n\n" + vm)
    f = fleet(inventory)
    stopped = f.worker("hv1")
    job_id = f.queue.enqueue("backup", "vm")
    deadline = time.monotonic() + 60
    while f.queue.get(job_id).state != "running":
        assert time.monotonic() < deadline and stopped.poll() is None, f.log()
        time.sleep(0.1)
    first = str(f.queue.get(job_id).worker)
    f.worker("hv1")
    write_file(inventory, vm)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=30) == 0, f.log()  # at once: the job was handed back
    [job] = f.wait([job_id], timeout=60)
    assert job.state == "succeeded", (job.error_message, f.log())
    assert job.worker != first and (job.attempts, job.error_code) == (2, "interrupted")
