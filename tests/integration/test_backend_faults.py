"""Storage that fails: transient errors, timeouts, slow and torn writes, ENOSPC, objects
vanishing between list and read (tests/faultkit.py), behind the retry layer.

Every operation either succeeds, and then its point restores byte-identical through a
clean backend, or fails with one vmvault error line; afterwards ``check --read-data``
through a clean backend finds every committed point intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from support.cli import run_cli
from support.faultkit import FaultRates, FaultyBackend
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore, run_verify
from vmvault.app.retention import run_prune
from vmvault.app.vaults import init_vault, run_check, run_gc
from vmvault.backends.local import BackendFull, LocalBackend
from vmvault.backends.retry import BackendError, BackendUnavailable, RetryingBackend
from vmvault.errors import ObjectMissing, VmvaultError
from vmvault.inventory import parse_inventory
from vmvault.vault.locks import VaultLock, live_locks

MiB = testdisk.MiB
KiB = 1024
FAST_SCRYPT = {"n": 2**10, "r": 8, "p": 1}  # the key file's cost is not under test here
FAST_RETRY: dict[str, Any] = {"attempts": 4, "base_delay": 0.001, "max_delay": 0.004}


# -- helpers -------------------------------------------------------------------------------


def _clean_ctx(tmp_path: Path, pack_target: int = 256 * KiB) -> Context:
    """A new vault of small blocks and packs (many objects), seen through a clean backend."""
    ctx = Context(str(tmp_path / "vault"), f"sqlite:///{tmp_path / 'catalog.db'}")
    init_vault(ctx, pack_target=pack_target, block_size=1 * MiB, scrypt=FAST_SCRYPT)
    return ctx


def _faulty_ctx(clean: Context, faulty: FaultyBackend, **retry: Any) -> Context:
    """The same vault and catalog, seen through ``faulty`` behind the retry layer."""
    options = {**FAST_RETRY, **retry}
    return Context(
        clean.vault_path,
        clean.catalog_url,
        backend_factory=lambda _path: RetryingBackend(faulty, **options),
    )


def _faulty(clean: Context, seed: int = 0, rates: FaultRates | None = None) -> FaultyBackend:
    return FaultyBackend(LocalBackend(clean.vault_path), seed, rates)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _restores_identical(ctx: Context, point_id: str, disk: str, want: str, out: Path) -> None:
    out.unlink(missing_ok=True)
    run_restore(ctx, point_id, str(out), disk=disk)
    assert _digest(out) == want, f"{point_id}/{disk} does not restore byte-identical"


def _one_line(exc: VmvaultError) -> None:
    assert exc.code not in ("error", ""), f"unnamed error: {exc.message}"
    assert exc.message and "\n" not in exc.message, exc.message


def _check_clean(ctx: Context) -> None:
    report = run_check(ctx, read_data=True)
    errors = [p.to_dict() for p in report.problems if p.severity == "error"]
    assert report.ok, errors


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "os.img"
    testdisk.create_disk(path, 3 * MiB, seed=5, jobs=1)
    return path


# -- the retry layer -----------------------------------------------------------------------


def test_transient_failures_are_retried_until_the_call_succeeds(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path), seed=0)
    backend = RetryingBackend(faulty, **FAST_RETRY)
    faulty.inject("put", "packs/", "transient")
    faulty.inject("put", "packs/", "timeout-after")  # stored, but the answer was lost
    faulty.inject("put", "packs/", "torn")  # a prefix under the name, then a reset
    backend.put("packs/ab/ab01", [b"x" * 1000, b"y" * 1000])
    assert faulty.calls["put"] == 4
    assert LocalBackend(tmp_path).get("packs/ab/ab01") == b"x" * 1000 + b"y" * 1000
    faulty.inject("get", "packs/", "timeout", times=3)
    assert backend.get("packs/ab/ab01", 1000, 4) == b"yyyy"
    faulty.inject("delete", "packs/", "transient-after")  # deleted, then the reset
    backend.delete("packs/ab/ab01")
    assert not LocalBackend(tmp_path).exists("packs/ab/ab01")


def test_a_listing_broken_half_way_is_read_again_without_duplicates(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path)
    for i in range(20):
        local.put(f"index/{i:04x}", b"i")
    faulty = FaultyBackend(local, seed=3)
    faulty.inject("list", "index/", "break", times=2)
    keys = list(RetryingBackend(faulty, **FAST_RETRY).list("index/"))
    assert keys == sorted(f"index/{i:04x}" for i in range(20))
    assert faulty.injected["break"] == 2


def test_retries_are_bounded_and_end_in_one_error_line(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path), seed=0)
    faulty.inject("put", "points/", "transient", times=100)
    backend = RetryingBackend(faulty, attempts=5, base_delay=0.01, max_delay=0.02)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        backend.put("points/p1", b"point")
    assert time.monotonic() - started < 1.0
    assert faulty.calls["put"] == 5
    _one_line(caught.value)
    assert "put points/p1" in caught.value.message and "5 attempts" in caught.value.message
    # The deadline bounds the total time whatever the number of attempts.
    faulty.inject("get", "points/", "timeout", times=1000)
    slow = RetryingBackend(faulty, attempts=1000, base_delay=0.05, max_delay=0.05, deadline=0.3)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        slow.get("points/p1")
    assert time.monotonic() - started < 1.0


def test_what_no_retry_mends_fails_at_once(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path), seed=0)
    backend = RetryingBackend(faulty, attempts=5, base_delay=1.0, max_delay=1.0)
    started = time.monotonic()
    faulty.inject("put", "packs/", "enospc")
    with pytest.raises(BackendFull) as full:
        backend.put("packs/ab/ab02", b"data")
    _one_line(full.value)
    with pytest.raises(ObjectMissing):  # a vanished object does not come back
        backend.get("points/none")
    (tmp_path / "manifests").write_bytes(b"a file where a directory belongs")
    with pytest.raises(BackendError) as broken:  # a real OSError (ENOTDIR/EEXIST)
        backend.put("manifests/m1", b"manifest")
    _one_line(broken.value)
    assert (faulty.calls["put"], faulty.calls["get"]) == (2, 1)  # one attempt each
    assert time.monotonic() - started < 1.0  # no backoff slept


def test_the_local_backend_is_atomic_when_the_disk_fills_mid_write(tmp_path: Path) -> None:
    """The Backend contract the objects rewritten in place rely on: a put that fails half-way
    leaves the old object whole (a real 1 MiB tmpfs runs out of space mid-write)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], check=True)
    try:
        backend = RetryingBackend(LocalBackend(mountpoint), **FAST_RETRY)
        backend.put("settings", b"old settings" * 1000)
        with pytest.raises(BackendFull):
            backend.put("settings", b"new settings" * 200_000)  # 2.4 MB: does not fit
        assert backend.get("settings") == b"old settings" * 1000
        assert LocalBackend(mountpoint).list_leftovers() == []
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_the_default_context_retries(tmp_path: Path) -> None:
    ctx = Context(str(tmp_path / "vault"))
    assert isinstance(ctx.backend(), RetryingBackend)


# -- torn writes: a failed backup leaves nothing a later point could reference -------------


def test_a_torn_manifest_is_never_referenced_by_a_later_point(tmp_path: Path, image: Path) -> None:
    clean = _clean_ctx(tmp_path)
    faulty = _faulty(clean)
    faulty.inject("put", "manifests/", "torn-full")  # a prefix, then the disk is full
    with pytest.raises(BackendFull):
        run_backup(_faulty_ctx(clean, faulty), "web", [DiskSpec("os", str(image))])
    # The same disk again: the same blocks, so the same manifest id as the torn object.
    point = run_backup(clean, "web", [DiskSpec("os", str(image))])
    _check_clean(clean)
    _restores_identical(clean, point["id"], "os", _digest(image), tmp_path / "out.img")


@pytest.mark.parametrize("fault", ["torn-full", "transient-after"])
def test_a_point_that_failed_to_commit_is_not_left_in_the_vault(
    tmp_path: Path, image: Path, fault: str
) -> None:
    """A torn point object would be a damaged point (alerts, GC refusing); a whole one
    whose answer was lost would be a point of a backup reported as failed."""
    clean = _clean_ctx(tmp_path)
    faulty = _faulty(clean)
    faulty.inject("put", "points/", fault, times=FAST_RETRY["attempts"])
    with pytest.raises(VmvaultError) as caught:
        run_backup(_faulty_ctx(clean, faulty), "web", [DiskSpec("os", str(image))])
    _one_line(caught.value)
    assert clean.open_vault().point_ids() == []
    _check_clean(clean)


@pytest.mark.parametrize("prefix", ["packs/", "index/"])
def test_a_torn_pack_or_index_object_of_a_failed_backup_is_removed(
    tmp_path: Path, image: Path, prefix: str
) -> None:
    clean = _clean_ctx(tmp_path)
    faulty = _faulty(clean)
    faulty.inject("put", prefix, "torn-full")
    with pytest.raises(BackendFull):
        run_backup(_faulty_ctx(clean, faulty), "web", [DiskSpec("os", str(image))])
    vault = clean.open_vault()
    assert vault.index_problems == {}  # no unreadable index object
    for pack_id in vault.pack_ids():  # every pack left is whole (adopted by the next run)
        vault.read_pack_header(pack_id)
    _check_clean(clean)
    point = run_backup(clean, "web", [DiskSpec("os", str(image))])
    _restores_identical(clean, point["id"], "os", _digest(image), tmp_path / "out.img")


# -- locks -----------------------------------------------------------------------------------


def _lock_doc(vault_dir: Path) -> dict[str, Any]:
    (key,) = LocalBackend(vault_dir).list("locks/")
    doc: dict[str, Any] = json.loads(LocalBackend(vault_dir).get(key))
    return doc


def test_the_lock_heartbeat_outlives_a_full_or_failing_store(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path), seed=0)
    faulty.inject("put", "locks/", "enospc", skip=1)  # the first heartbeat: disk full
    faulty.inject("put", "locks/", "transient", times=10)  # then the store is down a while
    with VaultLock(RetryingBackend(faulty, **FAST_RETRY), "backup", heartbeat=0.02):
        first = _lock_doc(tmp_path)["heartbeat"]
        deadline = time.monotonic() + 5
        while faulty.injected["transient"] < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        after_faults = time.time()
        while _lock_doc(tmp_path)["heartbeat"] <= after_faults and time.monotonic() < deadline:
            time.sleep(0.01)
        assert faulty.injected["enospc"] == 1 and faulty.injected["transient"] == 10
        assert _lock_doc(tmp_path)["heartbeat"] > after_faults > first, "the heartbeat stopped"


def test_a_failed_lock_write_leaves_no_lock_behind(tmp_path: Path, image: Path) -> None:
    """Taking the lock failed after the object was stored: a lock nobody holds would hold
    off garbage collection for ten minutes."""
    clean = _clean_ctx(tmp_path)
    faulty = _faulty(clean)
    faulty.inject("put", "locks/", "transient-after", times=FAST_RETRY["attempts"])
    with pytest.raises(BackendUnavailable):
        run_backup(_faulty_ctx(clean, faulty), "web", [DiskSpec("os", str(image))])
    assert live_locks(clean.backend()) == []


def test_a_lock_that_cannot_be_released_does_not_fail_a_finished_backup(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The point is committed and recorded: the job succeeded. The lock goes stale, and a
    warning says so."""
    clean = _clean_ctx(tmp_path)
    faulty = _faulty(clean)
    faulty.inject("delete", "locks/", "transient", times=FAST_RETRY["attempts"])
    point = run_backup(_faulty_ctx(clean, faulty), "web", [DiskSpec("os", str(image))])
    assert clean.open_vault().point_ids() == [point["id"]]
    _restores_identical(clean, point["id"], "os", _digest(image), tmp_path / "out.img")
    released = [r for r in caplog.records if "could not release the lock" in r.getMessage()]
    assert [r.levelno for r in released] == [logging.WARNING]


def test_a_store_gone_for_good_is_one_error_not_two(
    tmp_path: Path, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The backup failed because the store stopped answering: its error is the one line a
    person sees; that the lock could not be released either is only logged (info)."""
    caplog.set_level(logging.INFO, logger="vmvault")
    clean = _clean_ctx(tmp_path)
    faulty = _faulty(clean)
    faulty.inject("put", "packs/", "transient", times=1000)
    faulty.inject("delete", "locks/", "transient", times=FAST_RETRY["attempts"])
    with pytest.raises(BackendUnavailable):
        run_backup(_faulty_ctx(clean, faulty), "web", [DiskSpec("os", str(image))])
    released = [r for r in caplog.records if "could not release the lock" in r.getMessage()]
    assert [r.levelno for r in released] == [logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- objects vanishing between list and read ----------------------------------------------


def test_check_skips_objects_deleted_since_its_listing(tmp_path: Path, image: Path) -> None:
    clean = _clean_ctx(tmp_path)
    run_backup(clean, "web", [DiskSpec("os", str(image))])
    faulty = _faulty(clean)
    faulty.inject("list", "points/", "vanish")  # a point forgotten meanwhile
    faulty.inject("list", "index/", "vanish", skip=1)  # check's own listing, not the load's
    report = run_check(_faulty_ctx(clean, faulty), read_data=True)
    assert faulty.injected["vanish"] == 2
    assert report.ok, [p.to_dict() for p in report.problems]
    assert report.points == 1 and report.index_objects == 1


# -- many seeds: every operation through a store that fails in every way ------------------

PROFILES = {
    # a store having a bad day: many retries, nearly every operation gets through
    "flaky": FaultRates(
        transient=0.1, timeout=0.03, slow=0.05, torn=0.08, enospc=0.002, vanish=0.3
    ),
    # a storm: retries run out now and then, operations fail half-way
    "storm": FaultRates(transient=0.22, timeout=0.05, slow=0.02, torn=0.1, vanish=0.5),
    # a disk filling up: ENOSPC, half of them after a torn prefix
    "filling": FaultRates(
        transient=0.04, timeout=0.02, slow=0.02, torn=0.04, enospc=0.03, vanish=0.3
    ),
}
SEEDS = range(24)

_INVENTORY = """
[policies.daily]
schedule = {{ kind = "daily", time = "22:30", timezone = "UTC" }}
retention = {{ instant_restore_days = 1, daily_days = 7 }}

[[vms]]
name = "web"
policy = "daily"
  [[vms.disks]]
  name = "os"
  path = "{os}"
  [[vms.disks]]
  name = "data"
  path = "{data}"
"""


class _Run:
    """The operations of one seed, through the faulty store, and what they promised."""

    def __init__(self, tmp_path: Path, seed: int) -> None:
        self.tmp_path = tmp_path
        self.clean = _clean_ctx(tmp_path, pack_target=128 * KiB)
        rates = PROFILES[list(PROFILES)[seed % len(PROFILES)]]
        self.faulty = _faulty(self.clean, seed, rates)
        self.ctx = _faulty_ctx(self.clean, self.faulty)
        self.disks = {"os": tmp_path / "os.img", "data": tmp_path / "data.img"}
        testdisk.create_disk(self.disks["os"], 6 * MiB, seed=seed, jobs=1)
        testdisk.create_disk(self.disks["data"], 4 * MiB, seed=seed + 1000, jobs=1)
        self.committed: dict[str, dict[str, str]] = {}  # point -> disk -> sha256
        self.outcomes: list[tuple[str, str]] = []  # (operation, "ok" or the error's code)

    def attempt(self, name: str, action: Callable[[], Any]) -> Any:
        try:
            result = action()
        except VmvaultError as exc:
            _one_line(exc)
            self.outcomes.append((name, exc.code))
            return None
        self.outcomes.append((name, "ok"))
        return result

    def backup(self, name: str, *, full: bool = False) -> None:
        """A backup, and once more if it failed (as the job queue retries it): the retry
        adopts what the failed run stored and must not trip over what it left torn."""
        specs = [DiskSpec(disk, str(path)) for disk, path in self.disks.items()]
        for _ in range(2):
            point = self.attempt(name, lambda: run_backup(self.ctx, "web", specs, full=full))
            if point is not None:
                self.committed[point["id"]] = {d: _digest(p) for d, p in self.disks.items()}
                return

    def out(self) -> Path:
        return self.tmp_path / "restored.img"

    def points_in_vault(self) -> list[str]:
        return self.clean.open_vault(load_index=False).point_ids()


@pytest.mark.parametrize("seed", SEEDS)
def test_every_operation_succeeds_or_fails_cleanly_and_damages_nothing(
    tmp_path: Path, seed: int
) -> None:
    run = _Run(tmp_path, seed)
    run.backup("full backup", full=True)
    testdisk.mutate_disk(run.disks["os"], 10, seed=seed, jobs=1)
    run.backup("incremental backup")
    testdisk.mutate_disk(run.disks["data"], 10, seed=seed, jobs=1)
    run.backup("incremental backup")
    for point_id, disks in list(run.committed.items())[-2:]:
        for disk, want in disks.items():
            run.attempt(
                "restore",
                lambda p=point_id, d=disk, w=want: _restores_identical(run.ctx, p, d, w, run.out()),
            )
        run.attempt("verify", lambda p=point_id: run_verify(run.ctx, p))
    report = run.attempt("check", lambda: run_check(run.ctx, read_data=True))
    if report is not None:  # a check that finished says what a clean one says: all is well
        assert report.ok, [p.to_dict() for p in report.problems]
    inventory = parse_inventory(
        _INVENTORY.format(os=run.disks["os"], data=run.disks["data"]), "inventory.toml"
    )
    later = datetime.now(UTC) + timedelta(days=2)  # one point a day is kept: the day's last
    plan = run_prune(run.clean, inventory, dry_run=True, now=later)
    planned = plan["vms"]["web"]["prune"]
    run.attempt("prune", lambda: run_prune(run.ctx, inventory, now=later))
    run.attempt("gc", lambda: run_gc(run.ctx, grace=0, repack_threshold=0.1))
    testdisk.mutate_disk(run.disks["os"], 20, seed=seed + 1, jobs=1)
    run.backup("backup after gc")

    # Through a clean backend: the vault is whole, every committed point restores.
    _check_clean(run.clean)
    present = set(run.points_in_vault())
    for point_id, disks in run.committed.items():
        if point_id not in present:
            assert point_id in planned, f"{point_id} vanished without being pruned"
            continue
        for disk, want in disks.items():
            _restores_identical(run.clean, point_id, disk, want, run.out())
    assert present <= set(run.committed), "a point of a failed backup was left in the vault"
    assert live_locks(run.clean.backend()) == [] or any(code != "ok" for _, code in run.outcomes), (
        "a lock outlived operations that all succeeded"
    )
    assert sum(run.faulty.injected.values()) > 0, "no fault was injected"


def test_a_prune_that_fails_half_way_leaves_the_catalog_true(tmp_path: Path) -> None:
    """Points deleted before the failure are gone from the catalog too: `check` does not
    report them as deleted behind vmvault's back, `list` and the API do not show them."""
    clean = _clean_ctx(tmp_path)
    disks = {"os": tmp_path / "os.img", "data": tmp_path / "data.img"}
    testdisk.create_disk(disks["os"], 2 * MiB, seed=1, jobs=1)
    testdisk.create_disk(disks["data"], 1 * MiB, seed=2, jobs=1)
    specs = [DiskSpec(d, str(p)) for d, p in disks.items()]
    ids = [run_backup(clean, "web", specs)["id"] for _ in range(3)]
    inventory = parse_inventory(_INVENTORY.format(**disks), "inventory.toml")
    faulty = _faulty(clean)
    faulty.inject("delete", "points/", "transient", skip=1, times=FAST_RETRY["attempts"])
    later = datetime.now(UTC) + timedelta(days=2)
    with pytest.raises(BackendUnavailable):
        run_prune(_faulty_ctx(clean, faulty), inventory, now=later)
    vault = clean.open_vault(load_index=False)
    assert vault.point_ids() == ids[1:]  # the first deletion went through
    catalog = clean.catalog().points(vault.config.vault_id)
    assert [row.id for row in catalog] == ids[1:]
    _check_clean(clean)


def test_a_broken_store_is_one_error_line_on_the_cli(tmp_path: Path, image: Path) -> None:
    """An OSError no retry mends (here EEXIST: a file where the locks folder belongs) was a
    traceback; the retry layer makes it one line with a named code."""
    clean = _clean_ctx(tmp_path)
    (tmp_path / "vault" / "locks").write_bytes(b"not a folder")
    result = run_cli(
        "backup",
        str(image),
        "--vm",
        "web",
        "--json",
        env={"VMVAULT_VAULT": clean.vault_path, "VMVAULT_CATALOG": str(clean.catalog_url)},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "backend_error" and "put locks/" in error["message"]
