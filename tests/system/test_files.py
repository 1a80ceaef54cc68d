"""File-level restore: `vmvault files ls/get` and `vmvault mount` on a real guest's disk.

The disk (tests/support/guestdisk.py) has a GPT table and ext4, XFS, FAT, NTFS partitions
and an LVM volume group, each holding the same small tree; it is backed up once per
module, and files are listed and copied out of the point without restoring the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from support.browserkit import chromium, logged_in
from support.cli import PASSPHRASE, run_cli
from support.guestdisk import MTIME, GuestDisk, build_guest_disk, tools_missing
from support.serverkit import make_site, serving
from vmvault.app.backup import run_backup
from vmvault.app.context import Context
from vmvault.app.disks import DiskSpec
from vmvault.app.files import get_files, list_files, open_point_disk
from vmvault.app.vaults import init_vault
from vmvault.files.browse import FileNotInPoint
from vmvault.vault.packs import pack_key

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="XFS is filled through a loop mount (root)"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"needs {tools_missing()} (make sysdeps)"),
]
CHUNK = 64 * 1024


@dataclass
class Backed:
    guest: GuestDisk
    vault: str
    point: str

    def ctx(self, vault: str | None = None) -> Context:
        return Context(vault or self.vault, None, known_passphrase=PASSPHRASE)


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backed]:
    work = tmp_path_factory.mktemp("guest")
    guest = build_guest_disk(work)
    vault = str(work / "vault")
    ctx = Context(vault, f"sqlite:///{work / 'catalog.db'}", known_passphrase=PASSPHRASE)
    init_vault(ctx)
    point = run_backup(ctx, "guest", [DiskSpec("sda", str(guest.path))])
    yield Backed(guest, vault, point["id"])


def _lvm_volume(doc: dict[str, Any]) -> str:
    return next(v["name"] for v in doc["volumes"] if v["name"].endswith("-root"))


def test_volumes_of_a_gpt_disk_with_lvm(backed: Backed) -> None:
    doc = list_files(backed.ctx(), backed.point[:12])
    found = {v["name"]: (v["fs_type"], v["label"]) for v in doc["volumes"]}
    assert found["part1"] == ("ext4", "root")
    assert found["part2"] == ("xfs", "data")
    assert found["part3"] == ("vfat", "BOOT")
    assert found["part4"] == ("ntfs", "win")
    assert found["part5"][0] == "lvm"
    assert found[_lvm_volume(doc)] == ("ext4", "lvroot")


@pytest.mark.parametrize("volume", ["part1", "part2", "part3", "part4", "lvm"])
def test_listing_matches_the_guest_tree(backed: Backed, volume: str) -> None:
    ctx = backed.ctx()
    if volume == "lvm":
        volume = _lvm_volume(list_files(ctx, backed.point))
    doc = list_files(ctx, backed.point, f"/{volume}/data")
    entries = {e["name"]: e for e in doc["entries"]}
    assert sorted(entries) == ["big", "deep", "link", "sparse"]
    assert entries["big"]["size"] == len(backed.guest.big)
    assert entries["deep"]["kind"] == "dir"
    assert entries["big"]["mtime"] == pytest.approx(MTIME, abs=2)  # FAT keeps 2 s steps
    if volume != "part3":  # FAT has no symlinks: mtools copied the file it points to
        assert entries["link"]["kind"] == "symlink"
        assert entries["link"]["target"] == "../etc/hostname"


@pytest.mark.parametrize("volume", ["part1", "part2", "part4", "lvm"])
def test_get_keeps_contents_modes_owners_times_symlinks_and_holes(
    backed: Backed, volume: str, tmp_path: Path
) -> None:
    ctx = backed.ctx()
    if volume == "lvm":
        volume = _lvm_volume(list_files(ctx, backed.point))
    to = tmp_path / "out"
    doc = get_files(ctx, backed.point, [f"/{volume}/data", f"/{volume}/etc"], str(to))
    assert doc["failed"] == [] and doc["symlinks"] == 1
    tree = backed.guest.tree
    for rel in ("data/big", "data/sparse", "data/deep/er/note.txt", "etc/hostname", "etc/motd"):
        assert (to / rel).read_bytes() == (tree / rel).read_bytes(), rel
    assert os.readlink(to / "data" / "link") == "../etc/hostname"
    sparse = (to / "data" / "sparse").stat()
    assert sparse.st_blocks * 512 < 1024 * 1024  # 8 MiB long, a few KiB stored
    hostname = (to / "etc" / "hostname").lstat()
    assert hostname.st_mtime == pytest.approx(MTIME, abs=1)
    assert (to / "data" / "deep").stat().st_mtime == pytest.approx(MTIME, abs=1)
    if volume != "part4":  # NTFS has no POSIX modes or owners
        assert stat.S_IMODE(hostname.st_mode) == 0o640
        assert (hostname.st_uid, hostname.st_gid) == (1234, 99)


def test_get_from_fat_keeps_contents_and_times(backed: Backed, tmp_path: Path) -> None:
    to = tmp_path / "fat"
    doc = get_files(backed.ctx(), backed.point, ["/part3/data/big", "/part3/etc"], str(to))
    assert doc["files"] == 3 and doc["failed"] == []
    assert (to / "big").read_bytes() == backed.guest.big
    assert (to / "etc" / "hostname").read_text() == "guest-one\n"
    assert (to / "big").stat().st_mtime == pytest.approx(MTIME, abs=2)


def test_only_the_blocks_of_the_wanted_file_are_read(backed: Backed, tmp_path: Path) -> None:
    doc = get_files(backed.ctx(), backed.point, ["/part2/etc/hostname"], str(tmp_path / "o"))
    assert doc["files"] == 1
    # The XFS metadata and the file's block, of a disk of over a hundred blocks.
    assert doc["blocks_read"] <= 6 < doc["disk_blocks"] // 10


def test_cli_ls_and_get_and_their_errors(backed: Backed, tmp_path: Path) -> None:
    base = ("--vault", backed.vault)
    listed = run_cli("files", "ls", *base, backed.point[:10], "/part2/etc")
    assert listed.returncode == 0, listed.stderr
    assert "-rw-r-----   1234     99" in listed.stdout and "hostname" in listed.stdout

    as_json = run_cli("files", "ls", *base, "latest", "/", "--json")
    assert [v["name"] for v in json.loads(as_json.stdout)["volumes"]][:4] == [
        "part1",
        "part2",
        "part3",
        "part4",
    ]

    missing = run_cli("files", "ls", *base, "latest", "/part1/etc/nothing")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: /part1/etc/nothing: no such file or directory in disk sda of point {backed.point}"
    ]
    with pytest.raises(FileNotInPoint, match="its volumes: part1, part2"):
        list_files(backed.ctx(), backed.point, "/part9/etc")

    # A symlink in the middle of a path is not followed: the guest's links name nothing here.
    through_link = run_cli("files", "ls", *base, "latest", "/part1/data/link/x", "--json")
    assert json.loads(through_link.stdout)["error"]["code"] == "not_a_directory"

    to = tmp_path / "out"
    got = run_cli("files", "get", *base, "latest", "/part1/etc", "--to", str(to))
    assert got.returncode == 0, got.stderr
    assert "copied 2 files, 1 directory" in got.stdout
    (to / "etc" / "hostname").write_text("changed here\n")
    again = run_cli("files", "get", *base, "latest", "/part1/etc", "--to", str(to))
    assert again.returncode == 2 and "already exists: nothing was overwritten" in again.stderr
    assert (to / "etc" / "hostname").read_text() == "changed here\n"

    # A symlink planted where a copy would go is refused, not followed.
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", to / "data")
    planted = run_cli("files", "get", *base, "latest", "/part1/data", "--to", str(to))
    assert planted.returncode == 2 and "already exists" in planted.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []


def _chunk_of_file(backed: Backed, vault: str, path: str, at: int) -> tuple[bytes, int, int]:
    """The pack, offset and length of the sealed blob holding byte ``at`` of a file."""
    with open_point_disk(backed.ctx(vault), backed.point) as pd:
        located = pd.browser.locate(path)
        assert located.node is not None and located.volume is not None
        start, size = located.volume.offset, located.volume.size
        assert start is not None
        # Where the volume's file system put the file: found by its bytes in the volume.
        wanted = located.node.open().read(4096)
    with open(backed.guest.path, "rb") as f:
        f.seek(start)
        found = f.read(size).find(wanted)
    assert found >= 0
    part_start = start + found + at
    with open_point_disk(backed.ctx(vault), backed.point) as pd:
        vault_ = pd.reader.vault
        manifest = pd.reader.manifest
        block = part_start // manifest.block_size
        record = vault_.records([manifest.records[block]])[manifest.records[block]]
        assert isinstance(record, list)
        chunk = record[(part_start % manifest.block_size) // CHUNK]
        loc = vault_.index.get(chunk)
        assert loc is not None
        return loc.pack_id, loc.offset, loc.length


def test_a_damaged_chunk_costs_only_the_files_on_it(backed: Backed, tmp_path: Path) -> None:
    vault = str(tmp_path / "vault")
    shutil.copytree(backed.vault, vault)
    # The middle of the file: its blob holds none of the file system's own blocks.
    pack_id, offset, length = _chunk_of_file(backed, vault, "/part2/data/big", 3 << 20)
    pack = Path(vault, pack_key(pack_id))
    with open(pack, "r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))

    to = tmp_path / "out"
    done = run_cli(
        "files", "get", "--vault", vault, "latest", "/part2/data", "/part2/etc", "--to", str(to)
    )
    assert done.returncode == 3, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: /part2/data/big was not copied")
    assert "NOT copied /part2/data/big" in done.stdout
    assert not (to / "data" / "big").exists()
    assert (to / "etc" / "hostname").read_text() == "guest-one\n"
    assert (to / "data" / "deep" / "er" / "note.txt").read_text() == "down here\n"


def test_mount_serves_every_volume_read_only(backed: Backed, tmp_path: Path) -> None:
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.fail("FUSE is missing: `make sysdeps` installs fuse3")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "VMVAULT_PASSPHRASE": PASSPHRASE}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from vmvault.cli.main import run; run()",
            "mount",
            "--vault",
            backed.vault,
            backed.point,
            str(mnt),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.1)
        volumes = sorted(os.listdir(mnt))
        assert volumes[:4] == ["part1", "part2", "part3", "part4"]
        assert (mnt / "part2" / "data" / "big").read_bytes() == backed.guest.big
        assert os.readlink(mnt / "part4" / "data" / "link") == "../etc/hostname"
        hostname = (mnt / "part1" / "etc" / "hostname").stat()
        assert (hostname.st_uid, stat.S_IMODE(hostname.st_mode)) == (1234, 0o440)
        with pytest.raises(OSError):
            (mnt / "part1" / "new").write_text("no")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert not os.path.ismount(mnt)


@pytest.mark.browser
def test_dashboard_browses_a_point_and_downloads_a_file_and_a_folder(
    backed: Backed, tmp_path: Path
) -> None:
    site = make_site(tmp_path / "site", backup=False)
    point = run_backup(site.ctx, "guest", [DiskSpec("sda", str(backed.guest.path))])
    with serving(site, tmp_path / "server.log") as served, chromium() as browser:
        page = logged_in(browser, served.url, site.tokens["reader"], accept_downloads=True)
        context = page.context

        page.goto(f"/points/{point['id']}")
        page.click("a.browse")
        expect(page.locator("#volumes")).to_contain_text("xfs")
        page.click("#volumes >> text=part2")
        page.click("#entries >> text=etc/")
        expect(page.locator("#entries")).to_contain_text("hostname")
        expect(page.locator("#entries")).to_contain_text("1234:99")

        with page.expect_download() as one:
            page.click("#entries tr.file:has-text('hostname') a.download")
        saved = tmp_path / "hostname"
        one.value.save_as(saved)
        assert saved.read_text() == "guest-one\n"

        page.click("#path >> text=part2")
        with page.expect_download() as folder:
            page.click("#entries tr.dir:has-text('data') a.download")
        archive = tmp_path / "data.tar"
        folder.value.save_as(archive)
        assert folder.value.suggested_filename == "data.tar"
        with tarfile.open(archive) as tar:
            members = {m.name: m for m in tar.getmembers()}
            assert members["data/link"].issym() and members["data/link"].linkname == (
                "../etc/hostname"
            )
            big = tar.extractfile(members["data/big"])
            assert big is not None and big.read() == backed.guest.big
            assert members["data/deep/er/note.txt"].mtime == MTIME

        missing = page.goto(f"/points/{point['id']}/files?path=/part2/nothing")
        assert missing is not None and missing.status == 404
        expect(page.locator("p.missing")).to_contain_text("no such file or directory")
        context.close()

        api = f"{served.url}/api/v1/points/{point['id']}/files"
        assert httpx.get(api, timeout=10).status_code == 401
        listed = served.get(f"/api/v1/points/{point['id']}/files?path=/part4/etc", "reader")
        assert [e["name"] for e in listed.json()["entries"]] == ["hostname", "motd"]


def test_a_full_or_read_only_destination_is_one_error_and_no_partial_file(
    backed: Backed, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        full = run_cli(
            "files",
            "get",
            "--vault",
            backed.vault,
            "latest",
            "/part1/data",
            "--to",
            str(small / "out"),
        )
        assert full.returncode != 0
        lines = full.stderr.strip().splitlines()
        assert len(lines) == 1 and "No space left on device" in lines[0], full.stderr
        assert not (small / "out" / "data" / "big").exists()  # no half-written file

        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        read_only = run_cli(
            "files",
            "get",
            "--vault",
            backed.vault,
            "latest",
            "/part1/etc",
            "--to",
            str(small / "out"),
            "--json",
        )
        assert read_only.returncode != 0
        assert "Read-only file system" in json.loads(read_only.stdout)["error"]["message"]
    finally:
        subprocess.run(["umount", str(small)], check=False)
