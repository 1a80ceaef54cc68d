"""`vmvault export`: a recovery point served over NBD by nbdkit, read by real clients.

A test image with holes, written zeros and data is backed up, exported by the real
command, and read with qemu-img, nbdcopy, nbdinfo and qemu-io; every nbdkit a test starts
is stopped at its end, whatever happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cli import PASSPHRASE, run_cli, same_content
from support.s3kit import S3Vault
from vmvault import testdisk
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.vaults import init_vault
from vmvault.export.reader import PointReader
from vmvault.export.state import EXPORT_DIR_ENV, ExportRecord, is_running, read_records
from vmvault.model.point import RecoveryPoint
from vmvault.vault.format import ZERO_ID

MiB = testdisk.MiB
CHUNK = 64 * 1024
GONE_TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nbdkit", "nbdcopy", "nbdinfo", "qemu-img", "qemu-io")),
    reason="needs nbdkit, libnbd's tools and QEMU's (make sysdeps)",
)


@pytest.fixture
def export_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The exports' folder of this test (short: a socket's path must fit in 108 bytes);
    every nbdkit recorded there is killed at the end, then the folder goes."""
    directory = Path(tempfile.mkdtemp(prefix="vx-"))
    monkeypatch.setenv(EXPORT_DIR_ENV, str(directory))
    try:
        yield directory
    finally:
        for _, record in read_records(directory):
            _kill(record)
        shutil.rmtree(directory, ignore_errors=True)


def _kill(record: ExportRecord) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_running(record):
            return
        os.kill(record["pid"], sig)
        _wait_until(lambda: not is_running(record), 10.0)


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _image(make_image: Callable[..., Path]) -> Path:
    """testdisk's mix (holes, written zeros, text, random) plus a zero chunk written in
    the middle of data, so a block holds data and a zero chunk side by side."""
    image = make_image("disk.img", size=12 * MiB + 5 * CHUNK, seed=2)
    with open(image, "r+b") as f:
        data = f.read()
        for offset in range(CHUNK, len(data) - 2 * CHUNK, CHUNK):
            if any(data[offset - CHUNK : offset]) and any(
                data[offset + CHUNK : offset + 2 * CHUNK]
            ):
                f.seek(offset)
                f.write(bytes(CHUNK))
                break
    return image


@pytest.fixture
def backed_up(ctx: Context, make_image: Callable[..., Path]) -> tuple[Path, RecoveryPoint]:
    image = _image(make_image)
    point = run_backup(ctx, "web01", [DiskSpec("os", str(image))])
    assert point["disks"][0]["stats"]["zero"] > 0  # the test needs zeros to skip
    return image, point


def _export(ctx: Context, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = run_cli("export", *args, "--vault", ctx.vault_path, "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def _listed() -> list[dict[str, Any]]:
    done = run_cli("export", "--list", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    exports: list[dict[str, Any]] = json.loads(done.stdout)["exports"]
    return exports


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _zero_runs(image: Path) -> list[tuple[int, int, bool]]:
    """The image's 64 KiB chunks as runs of (start, end, all zero)."""
    runs: list[tuple[int, int, bool]] = []
    data = image.read_bytes()
    for start in range(0, len(data), CHUNK):
        end = min(start + CHUNK, len(data))
        zero = not any(data[start:end])
        if runs and runs[-1][2] == zero:
            runs[-1] = (runs[-1][0], end, zero)
        else:
            runs.append((start, end, zero))
    return runs


def _vault_files(root: str) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(root).rglob("*"))
        if path.is_file()
    }


def test_export_serves_the_point_with_its_holes_to_real_clients(
    ctx: Context, backed_up: tuple[Path, RecoveryPoint], export_dir: Path, tmp_path: Path
) -> None:
    image, point = backed_up
    doc = _export(ctx, point["id"][:10])  # a prefix, as restore takes
    uri = doc["uri"]
    assert doc["point"] == point["id"] and doc["disk"] == "os" and not doc["writable"]
    assert uri == f"nbd+unix:///?socket={doc['socket']}"
    assert doc["size"] == image.stat().st_size

    # The passphrase is in neither nbdkit's command line nor its environment.
    proc = Path(f"/proc/{doc['pid']}")
    assert PASSPHRASE.encode() not in (proc / "cmdline").read_bytes()
    assert PASSPHRASE.encode() not in (proc / "environ").read_bytes()

    copied = tmp_path / "copied.img"
    converted = _run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(copied))
    assert converted.returncode == 0, converted.stderr
    assert same_content(image, copied)
    # The zeros stay holes in the copy.
    data_bytes = sum(e - s for s, e, zero in _zero_runs(image) if not zero)
    assert copied.stat().st_blocks * 512 <= data_bytes + 1 * MiB

    compared = _run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(image), uri)
    assert compared.returncode == 0, compared.stdout + compared.stderr

    by_nbdcopy = tmp_path / "nbdcopy.img"
    copy = _run("nbdcopy", uri, str(by_nbdcopy))
    assert copy.returncode == 0, copy.stderr
    assert same_content(image, by_nbdcopy)

    mapped = _run("nbdinfo", "--map", "--json", uri)
    assert mapped.returncode == 0, mapped.stderr
    extents: list[tuple[int, int, bool]] = []
    for e in json.loads(mapped.stdout):
        zero = e["type"] == 3  # hole and zero: nothing stored
        assert zero or e["type"] == 0, e
        start, end = e["offset"], e["offset"] + e["length"]
        if extents and extents[-1][2] == zero and extents[-1][1] == start:
            extents[-1] = (extents[-1][0], end, zero)
        else:
            extents.append((start, end, zero))
    assert extents == _zero_runs(image)

    # Read-only: a write is refused.
    write = _run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 64k", uri)
    assert write.returncode != 0

    listed = _listed()
    assert [(e["id"], e["uri"], e["pid"]) for e in listed] == [(doc["id"], uri, doc["pid"])]

    stopped = run_cli("export", "--stop", doc["id"], "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"stopped": [doc["id"]]}
    assert not is_running(doc)  # type: ignore[arg-type]
    assert not os.path.exists(doc["socket"])
    assert _listed() == []
    assert list(Path(ctx.vault_path, "locks").iterdir()) == []  # the vault's lock released


def test_writable_export_keeps_writes_in_an_overlay_never_in_the_vault(
    ctx: Context, backed_up: tuple[Path, RecoveryPoint], export_dir: Path, tmp_path: Path
) -> None:
    image, point = backed_up
    before = _vault_files(ctx.vault_path)
    writable = _export(ctx, point["id"], "--writable")
    assert writable["writable"]
    uri = writable["uri"]

    wrote = _run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 64k", uri)
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    read_back = tmp_path / "read-back.img"
    assert _run("nbdcopy", uri, str(read_back)).returncode == 0
    with open(read_back, "rb") as got, open(image, "rb") as original:
        assert got.read(CHUNK) == b"\xab" * CHUNK
        original.seek(CHUNK)
        assert got.read() == original.read()  # the rest is the point's

    # Nothing in the vault changed but the export's own lock object.
    during = _vault_files(ctx.vault_path)
    assert {k: v for k, v in during.items() if not k.startswith("locks/")} == before

    # Another export of the same point reads the point, not the overlay.
    second = _export(ctx, point["id"])
    fresh = tmp_path / "fresh.img"
    assert (
        _run("qemu-img", "convert", "-f", "raw", "-O", "raw", second["uri"], str(fresh)).returncode
        == 0
    )
    assert same_content(image, fresh)

    stopped = run_cli("export", "--stop", "all", "--json")
    assert sorted(json.loads(stopped.stdout)["stopped"]) == sorted([writable["id"], second["id"]])
    assert _vault_files(ctx.vault_path) == before


class _Qmp:
    """QEMU (no guest) with QMP on its stdin and stdout. A thread reads its messages into a
    queue: select() on a buffered pipe misses lines already read into the buffer, which
    once left an event unseen until the deadline."""

    def __init__(self, qemu: subprocess.Popen[str]) -> None:
        self.qemu = qemu
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.qemu.stdout is not None
        for line in self.qemu.stdout:
            self._lines.put(line)
        self._lines.put("")  # QEMU ended

    def send(self, command: str, **arguments: Any) -> None:
        assert self.qemu.stdin is not None
        self.qemu.stdin.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.qemu.stdin.flush()

    def wait_for(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        """QMP's messages until one is ``wanted`` (an error answer fails the test)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"QEMU did not answer within {timeout} s") from None
            assert line, "QEMU ended"
            if not line.startswith("{"):
                continue  # what QEMU says to people on the same stream ("Formatting ...")
            message: dict[str, Any] = json.loads(line)
            assert "error" not in message, message
            if wanted(message):
                return message


@contextlib.contextmanager
def _qemu_attached(uri: str) -> Iterator[_Qmp]:
    """QEMU with the export as read-only drive d0: connected to the export until it ends
    or the block is left."""
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64",
            *("-M", "none", "-nodefaults", "-display", "none", "-qmp", "stdio"),
            *("-drive", f"if=none,id=d0,file={uri},format=raw,readonly=on"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        qmp = _Qmp(qemu)
        qmp.send("qmp_capabilities")
        qmp.wait_for(lambda m: "return" in m)  # the drive is open: QEMU is connected
        yield qmp
    finally:
        qemu.kill()
        qemu.wait()


needs_qemu = pytest.mark.skipif(
    not shutil.which("qemu-system-x86_64"), reason="needs qemu-system-x86_64"
)


@needs_qemu
def test_qemu_copies_the_export_as_a_drive_and_stop_ends_its_connection(
    ctx: Context, backed_up: tuple[Path, RecoveryPoint], export_dir: Path, tmp_path: Path
) -> None:
    """QEMU itself, with the export as a read-only drive: a full drive-backup of it is the
    backed-up image byte for byte. QEMU stays connected, idle: --stop still ends the
    export at once (nbdkit alone would wait for QEMU to leave) and releases the lock."""
    image, _ = backed_up
    doc = _export(ctx, "latest")
    target = tmp_path / "from-qemu.img"
    with _qemu_attached(doc["uri"]) as qmp:
        qmp.send("drive-backup", device="d0", target=str(target), sync="full", format="raw")
        done = qmp.wait_for(lambda m: m.get("event") == "BLOCK_JOB_COMPLETED")
        assert "error" not in done["data"], done
        assert same_content(image, target)

        stopped = run_cli("export", "--stop", doc["id"], "--json")
        assert json.loads(stopped.stdout) == {"stopped": [doc["id"]]}, stopped.stderr
        assert not is_running(doc)  # type: ignore[arg-type]
        assert qmp.qemu.poll() is None  # the client is still there; the export is not
    assert list(Path(ctx.vault_path, "locks").iterdir()) == []


def test_export_on_a_tcp_port_answers_on_loopback(
    ctx: Context, backed_up: tuple[Path, RecoveryPoint], export_dir: Path
) -> None:
    image, _ = backed_up
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = _export(ctx, "latest", "--port", str(port))
    assert doc["uri"] == f"nbd://127.0.0.1:{port}/" and doc["socket"] is None
    size = _run("nbdinfo", "--size", doc["uri"])
    assert size.returncode == 0, size.stderr
    assert int(size.stdout) == image.stat().st_size


@needs_qemu
def test_export_ends_by_itself_when_it_expires_even_with_a_client_attached(
    ctx: Context, backed_up: tuple[Path, RecoveryPoint], export_dir: Path
) -> None:
    doc = _export(ctx, "latest", "--expires", "3s")
    with _qemu_attached(doc["uri"]):
        assert _wait_until(lambda: not is_running(doc), GONE_TIMEOUT)  # type: ignore[arg-type]
    # It cleaned up after itself: socket, record, and the vault's lock.
    assert _wait_until(lambda: not os.path.exists(doc["socket"]), 5.0)
    assert read_records(export_dir) == []
    assert list(Path(ctx.vault_path, "locks").iterdir()) == []


def test_bad_passphrase_or_point_is_one_line_and_starts_nothing(
    ctx: Context, backed_up: tuple[Path, RecoveryPoint], export_dir: Path
) -> None:
    wrong = run_cli(
        "export", "latest", "--vault", ctx.vault_path, env={"VMVAULT_PASSPHRASE": "not it"}
    )
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines() == ["error: wrong passphrase for this vault"]

    unknown = run_cli("export", "20991231", "--vault", ctx.vault_path)
    assert unknown.returncode != 0
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert "no recovery point '20991231'" in unknown.stderr

    as_json = run_cli("export", "latest", "--disk", "data", "--vault", ctx.vault_path, "--json")
    assert as_json.returncode != 0
    assert json.loads(as_json.stdout)["error"]["code"] == "point_not_found"
    assert read_records(export_dir) == []

    both = run_cli("export", "--list", "--stop", "all")
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1


def test_damaged_pack_fails_the_read_with_an_io_error_named_in_the_log(
    ctx: Context, backed_up: tuple[Path, RecoveryPoint], export_dir: Path, tmp_path: Path
) -> None:
    _, point = backed_up
    packs = sorted(Path(ctx.vault_path, "packs").rglob("*"), key=lambda p: p.stat().st_size)
    data_pack = [p for p in packs if p.is_file()][-1]  # the data's: record packs are small
    with open(data_pack, "r+b") as f:
        f.seek(data_pack.stat().st_size // 2)  # inside a blob: the header is at the end
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))

    doc = _export(ctx, point["id"])
    out = tmp_path / "out.img"
    converted = _run("qemu-img", "convert", "-f", "raw", "-O", "raw", doc["uri"], str(out))
    assert converted.returncode != 0
    assert "Input/output error" in converted.stderr
    log = Path(doc["log"]).read_text()
    assert f"pack {data_pack.name[:16]}" in log, log


def test_sequential_reads_come_from_read_ahead_within_the_cache_bound(
    ctx: Context, make_image: Callable[..., Path]
) -> None:
    """In-process: what the NBD clients cannot see, the reader's cache and read-ahead."""
    image = make_image("seq.img", size=40 * MiB, seed=3)
    point = run_backup(ctx, "vm1", [DiskSpec("d0", str(image))])
    with ctx.session("export") as vault:
        manifest = vault.get_manifest(point["disks"][0]["manifest"])
        reader = PointReader(vault, manifest, name="d0", cache_bytes=16 * MiB, read_ahead=2)
        try:
            data = image.read_bytes()
            buf = bytearray(256 * 1024)
            for offset in range(0, len(data), len(buf)):
                view = memoryview(buf)[: min(len(buf), len(data) - offset)]
                reader.read_into(view, offset)
                assert view == data[offset : offset + len(view)]
                assert reader.cached_blocks() <= reader.capacity
            stored = sum(1 for r in manifest.records if r != ZERO_ID)
            assert reader.stats["blocks_read_ahead"] >= stored // 2
            assert reader.stats["blocks_fetched"] <= stored  # each block fetched once
            extents = reader.extents(0, len(data))
            assert sum(e.length for e in extents) <= len(data)
        finally:
            reader.close()


@pytest.mark.s3
def test_export_of_a_point_in_an_s3_vault(
    s3_vault: S3Vault, make_image: Callable[..., Path], export_dir: Path, tmp_path: Path
) -> None:
    ctx = Context(s3_vault.url(), f"sqlite:///{tmp_path / 'catalog.db'}")
    init_vault(ctx)
    image = _image(make_image)
    run_backup(ctx, "web01", [DiskSpec("os", str(image))])
    doc = _export(ctx, "latest")
    copied = tmp_path / "copied.img"
    converted = _run("qemu-img", "convert", "-f", "raw", "-O", "raw", doc["uri"], str(copied))
    assert converted.returncode == 0, converted.stderr
    assert same_content(image, copied)
    stopped = run_cli("export", "--stop", doc["id"], "--json")
    assert json.loads(stopped.stdout) == {"stopped": [doc["id"]]}
    locks = s3_vault.client.list_objects_v2(Bucket=s3_vault.bucket, Prefix="vault/locks/")
    assert locks.get("Contents", []) == []  # the export's lock released
