"""The damage matrix: every kind of vault object x every kind of damage x every operation.

For each object kind (config, key, pack, index, manifest, point, settings, protection,
gc/pending, lock) and each damage (missing, truncated, one flipped byte, replaced by another
object of the same kind), a copy of one prepared vault is damaged and then checked,
verified, backed up to, restored from, garbage-collected and served. Nothing may crash
(an exception that is not a named vmvault error); what each operation answers is the
table in docs/RELIABILITY.md, which this test keeps true: after a deliberate change,
regenerate it with `VMVAULT_WRITE_MATRIX=1 .venv/bin/pytest tests/test_damage_matrix.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.cli import PASSPHRASE
from support.paths import ROOT
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import PASSPHRASE_ENV, Context
from vmvault.app.disks import DiskSpec
from vmvault.app.restore import run_restore, run_verify
from vmvault.app.vaults import init_vault, run_check, run_gc
from vmvault.errors import RestoreDamaged, VmvaultError
from vmvault.vault.format import KIND_DATA

MiB = testdisk.MiB
KINDS = (
    "config",
    "key",
    "pack",
    "index",
    "manifest",
    "point",
    "settings",
    "protection",
    "gc/pending",
    "lock",
)
DAMAGES = ("missing", "truncated", "flipped byte", "replaced")
OPERATIONS = ("check", "verify", "backup", "verify, backup", "restore", "gc", "server")
DOC = ROOT / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- damage-matrix:begin -->", "<!-- damage-matrix:end -->"


@dataclass(frozen=True)
class Prepared:
    root: Path  # vault/, catalog.db, disk.img (as of the latest point)
    other: Path  # a second vault: "another object of the same kind" for one-of-a-kind objects
    digests: dict[str, str]  # point id -> sha256 of its disk
    targets: dict[str, tuple[str, str]]  # kind -> (the object damaged, its replacement)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prepare_vault(root: Path, seed: int) -> tuple[Context, dict[str, str]]:
    ctx = Context(str(root / "vault"), f"sqlite:///{root / 'catalog.db'}")
    init_vault(ctx, pack_target=512 * 1024)
    image = root / "disk.img"
    testdisk.create_disk(image, 8 * MiB, seed=seed, jobs=1)
    digests = {}
    for step in range(2):
        if step:
            testdisk.mutate_disk(image, 30, seed=seed + 10, jobs=1)
        point = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
        digests[point["id"]] = _digest(image)
    vault = ctx.open_vault()
    from vmvault import protection

    protection.set_soft_delete_days(vault, 30)
    protection.stop(vault, "retired-a", delete_data=False)
    protection.stop(vault, "retired-b", delete_data=False)
    vault.set_gc_pending({"created": 0, "packs": []})
    for n in range(2):  # locks of jobs that died (stale: their heartbeat stopped long ago)
        stale = {"kind": "backup", "started": 0, "heartbeat": time.time() - 3600, "host": "h"}
        vault.backend.put(f"locks/backup-{n:016x}", json.dumps(stale).encode())
    return ctx, digests


def _objects(root: Path, prefix: str) -> list[str]:
    base = root / "vault"
    return sorted(
        str(p.relative_to(base))
        for p in (base / prefix).rglob("*")
        if p.is_file() and not p.name.startswith(".tmp")
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    os.environ[PASSPHRASE_ENV] = PASSPHRASE
    root = tmp_path_factory.mktemp("matrix")
    other = tmp_path_factory.mktemp("matrix-other")
    ctx, digests = _prepare_vault(root, seed=1)
    _prepare_vault(other, seed=2)
    vault = ctx.open_vault()
    first, latest = sorted(digests)
    latest_manifest = vault.get_point(latest)["disks"][0]["manifest"]
    first_manifest = vault.get_point(first)["disks"][0]["manifest"]
    data_packs = sorted(
        {
            f"packs/{loc.pack_id.hex()[:2]}/{loc.pack_id.hex()}"
            for _, loc in vault.index.items()
            if loc.kind == KIND_DATA
        }
    )
    index = _objects(root, "index")
    protections = _objects(root, "protection")
    locks = _objects(root, "locks")
    targets = {
        "config": ("config", "other:config"),
        "key": ("keys/default", "other:keys/default"),
        "pack": (data_packs[0], data_packs[1]),
        "index": (index[0], index[1]),
        "manifest": (f"manifests/{latest_manifest}", f"manifests/{first_manifest}"),
        "point": (f"points/{latest}", f"points/{first}"),
        "settings": ("settings", "other:settings"),
        "protection": (protections[0], protections[1]),
        "gc/pending": ("gc/pending", "other:gc/pending"),
        "lock": (locks[0], locks[1]),
    }
    return Prepared(root, other, digests, targets)


def _damage(prepared: Prepared, dest: Path, kind: str, damage: str) -> None:
    victim_key, replacement = prepared.targets[kind]
    victim = dest / "vault" / victim_key
    if damage == "missing":
        victim.unlink()
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // 3)])
    elif damage == "flipped byte":
        data = bytearray(victim.read_bytes())
        middle = len(data) // 2
        if kind == "key":  # the middle lies in base64: change one character into another
            data[middle] = ord("B") if data[middle] == ord("A") else ord("A")
        else:
            data[middle] ^= 0x04
        victim.write_bytes(bytes(data))
    else:
        source = (
            prepared.other / "vault" / replacement.removeprefix("other:")
            if replacement.startswith("other:")
            else dest / "vault" / replacement
        )
        victim.write_bytes(source.read_bytes())


def _named(exc: VmvaultError) -> str:
    return f"refused ({exc.code})"


def _check(ctx: Context, prepared: Prepared, dest: Path) -> str:
    report = run_check(ctx, read_data=True)
    errors = sorted({p.kind for p in report.problems if p.severity == "error"})
    warnings = sorted({p.kind for p in report.problems if p.severity == "warning"})
    if errors:
        return "names " + ", ".join(errors)
    return "clean" + (f" (warns {', '.join(warnings)})" if warnings else "")


def _verify(ctx: Context, prepared: Prepared, dest: Path) -> str:
    ctx.open_vault(load_index=False)  # a vault that does not open refuses as a whole
    bad = 0
    for point_id in sorted(prepared.digests):
        try:
            _, reports = run_verify(ctx, point_id)
        except VmvaultError as exc:
            if exc.code not in ("point_not_found", "point_damaged", "corrupt_object"):
                raise
            bad += 1
            continue
        bad += any(r.damaged for r in reports)
    # (how many points share a damaged pack depends on how the backup's threads filled
    # its packs: the table says whether damage was named, not how much)
    return "both points ok" if not bad else "names the damaged point(s)"


def _verify_then_backup(ctx: Context, prepared: Prepared, dest: Path) -> str:
    """A backup after a verify that met the damage: it stores the damaged chunks again."""
    _verify(ctx, prepared, dest)
    return _backup(ctx, prepared, dest)


def _backup(ctx: Context, prepared: Prepared, dest: Path) -> str:
    image = dest / "disk.img"
    testdisk.mutate_disk(image, 10, seed=77, jobs=1)
    point = run_backup(ctx, "vm", [DiskSpec("os", str(image))])
    restored = dest / "new-point.img"
    try:
        run_restore(ctx, point["id"], str(restored))
    except RestoreDamaged:
        return "new point damaged (dedup on damage no read has found yet)"
    identical = _digest(restored) == _digest(image)
    restored.unlink()
    return "new point ok" if identical else "new point DIFFERS"


def _restore(ctx: Context, prepared: Prepared, dest: Path) -> str:
    latest = max(prepared.digests)
    target = dest / "restored.img"
    try:
        run_restore(ctx, latest, str(target))
    except RestoreDamaged as exc:
        assert exc.ranges
        return "names the damaged ranges"
    return "identical" if _digest(target) == prepared.digests[latest] else "DIFFERS"


def _gc(ctx: Context, prepared: Prepared, dest: Path) -> str:
    report = run_gc(ctx, grace=0)
    return "deferred" if report.deferred else "ok"


def _server(ctx: Context, prepared: Prepared, dest: Path) -> str:
    from fastapi.testclient import TestClient

    from vmvault.server.accounts import Accounts
    from vmvault.server.app import create_app
    from vmvault.server.state import ServerConfig

    config = ServerConfig(ctx.vault_path, ctx.catalog_url, scheduler=False, worker=False)
    app = create_app(config)
    with TestClient(app) as client:
        token = Accounts(ctx.catalog()).create_token("matrix", "reader")[0]
        headers = {"Authorization": f"Bearer {token}"}
        codes = {
            route: client.get(f"/api/v1/{route}", headers=headers).status_code
            for route in ("vault", "vms", "points", "cost")
        }
    failing = sorted(f"{route} {code}" for route, code in codes.items() if code != 200)
    return "answers" if not failing else "answers " + ", ".join(failing)


RUNNERS: dict[str, Callable[[Context, Prepared, Path], str]] = {
    "check": _check,
    "verify": _verify,
    "backup": _backup,
    "verify, backup": _verify_then_backup,
    "restore": _restore,
    "gc": _gc,
    "server": _server,
}


def _outcome(run: Callable[[], str]) -> str:
    try:
        return run()
    except VmvaultError as exc:
        return _named(exc)
    except Exception as exc:  # the point of the matrix: name what crashed
        return f"CRASH {type(exc).__name__}: {exc}"


def _row(prepared: Prepared, dest: Path, kind: str, damage: str) -> dict[str, str]:
    row = {}
    for op in OPERATIONS:  # each operation on its own fresh copy: they do not interfere
        case = dest / op.replace(", ", "-")
        case.mkdir()
        shutil.copytree(prepared.root / "vault", case / "vault")
        for part in prepared.root.glob("catalog.db*"):  # with SQLite's WAL, if any
            shutil.copy2(part, case / part.name)
        shutil.copy2(prepared.root / "disk.img", case / "disk.img")
        ctx = Context(str(case / "vault"), f"sqlite:///{case / 'catalog.db'}")
        _damage(prepared, case, kind, damage)
        row[op] = _outcome(lambda: RUNNERS[op](ctx, prepared, case))  # noqa: B023
    return row


CASES = [(kind, damage) for kind in KINDS for damage in DAMAGES]


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], dict[str, str]]:
    return {}


@pytest.mark.parametrize(("kind", "damage"), CASES)
def test_damage_is_named_and_nothing_crashes(
    prepared: Prepared,
    tmp_path: Path,
    kind: str,
    damage: str,
    results: dict[tuple[str, str], dict[str, str]],
) -> None:
    row = _row(prepared, tmp_path, kind, damage)
    results[(kind, damage)] = row
    crashes = {op: text for op, text in row.items() if text.startswith("CRASH")}
    assert not crashes, crashes
    assert "DIFFERS" not in " ".join(row.values()), row  # nothing restores wrong bytes
    expected = _documented().get((kind, damage))
    if os.environ.get("VMVAULT_WRITE_MATRIX"):
        _write_row(kind, damage, row)
    else:
        assert expected == row, (
            f"docs/RELIABILITY.md says {expected} for {kind} / {damage}; the vault now "
            f"answers {row} (regenerate the table: VMVAULT_WRITE_MATRIX=1)"
        )


def _line(kind: str, damage: str, row: dict[str, str]) -> str:
    return f"| {kind} | {damage} | " + " | ".join(row[op] for op in OPERATIONS) + " |"


_LINE = re.compile(r"^\| (?P<kind>[^|]+) \| (?P<damage>[^|]+) \| (?P<rest>.*) \|$")


def _documented() -> dict[tuple[str, str], dict[str, str]]:
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN not in text:
        return {}
    table = text.split(BEGIN, 1)[1].split(END, 1)[0]
    found = {}
    for line in table.splitlines():
        m = _LINE.match(line.strip())
        if m and m["kind"] not in ("object", "---"):
            cells = [c.strip() for c in m["rest"].split(" | ")]
            if len(cells) == len(OPERATIONS):
                found[(m["kind"].strip(), m["damage"].strip())] = dict(
                    zip(OPERATIONS, cells, strict=True)
                )
    return found


def _write_row(kind: str, damage: str, row: dict[str, str]) -> None:
    """Put one row into the documented table (rows are kept in KINDS x DAMAGES order)."""
    import fcntl

    with open(DOC.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers write rows concurrently
        rows = _documented()
        rows[(kind, damage)] = row
        header = [
            "| object | damage | " + " | ".join(OPERATIONS) + " |",
            "|---|---|" + "---|" * len(OPERATIONS),
        ]
        lines = [_line(k, d, rows[(k, d)]) for k, d in CASES if (k, d) in rows]
        table = "\n".join([BEGIN, *header, *lines, END])
        text = DOC.read_text() if DOC.exists() else ""
        if BEGIN in text:
            before, rest = text.split(BEGIN, 1)
            text = before + table + rest.split(END, 1)[1]
        else:
            text = text + "\n" + table + "\n"
        DOC.write_text(text)
    DOC.with_suffix(".lock").unlink(missing_ok=True)
