"""Tests for vmvault.testdisk: benchmarks rely on its images being reproducible and realistic."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmvault import testdisk
from vmvault.testdisk import (
    MUTATION_BLOCK,
    KiB,
    MiB,
    create_disk,
    main,
    mutate_disk,
    parse_size,
)

BLOCK = 4 * KiB


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_bytes(path: Path) -> int:
    """Bytes in allocated (non-hole) regions, found with SEEK_DATA/SEEK_HOLE."""
    total, pos, size = 0, 0, path.stat().st_size
    with path.open("rb") as f:
        fd = f.fileno()
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            total += pos - start
    return total


@pytest.fixture(scope="module")
def image64(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, testdisk.DiskStats]:
    path = tmp_path_factory.mktemp("td") / "disk64.img"
    return path, create_disk(path, 64 * MiB, seed=7, jobs=2)


def test_create_is_deterministic_and_independent_of_jobs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "c.img"
    create_disk(a, 32 * MiB, seed=3, jobs=1)
    create_disk(b, 32 * MiB, seed=3, jobs=2)
    create_disk(c, 32 * MiB, seed=4, jobs=2)
    assert sha256(a) == sha256(b)
    assert sha256(a) != sha256(c)
    create_disk(b, 32 * MiB, seed=3, jobs=3)  # overwriting an existing image gives the same bytes
    assert sha256(a) == sha256(b)


def test_mix_matches_the_baseline(image64: tuple[Path, testdisk.DiskStats]) -> None:
    path, stats = image64
    size = 64 * MiB
    assert path.stat().st_size == size == stats.size
    assert sum(stats.by_kind.values()) == size
    expected = {"hole": 0.40, "zero": 0.10, "text": 0.25, "random": 0.20, "dup": 0.05}
    for kind, frac in expected.items():
        assert abs(stats.by_kind[kind] - frac * size) <= 4 * BLOCK, kind  # rounding goes to dup
    assert stats.written == size - stats.by_kind["hole"]

    # What is really on disk: holes, allocated zeros, ASCII text, random bytes.
    assert abs(data_bytes(path) / size - 0.60) < 0.02
    data = path.read_bytes()
    blocks = [data[i : i + BLOCK] for i in range(0, size, BLOCK)]
    zero = bytes(BLOCK)
    text = [b for b in blocks if b != zero and b.isascii()]
    rand = [b for b in blocks if not b.isascii()]
    assert abs(len(blocks) - len(text) - len(rand) - 0.50 * len(blocks)) <= 1  # zeros + holes
    assert 0.249 <= len(text) / len(blocks) <= 0.301  # dups are copies of text or random
    assert 0.199 <= len(rand) / len(blocks) <= 0.251
    assert abs(len(text) + len(rand) - 0.50 * len(blocks)) <= 1

    text_bytes, rand_bytes = b"".join(text[:2048]), b"".join(rand[:2048])
    assert len(text_bytes) / len(zlib.compress(text_bytes, 1)) > 2.0
    assert len(rand_bytes) / len(zlib.compress(rand_bytes, 1)) < 1.01
    assert b"\n" in text_bytes and b"]: " in text_bytes  # log lines: "host prog[pid]: LEVEL"

    # Duplicates are the only repeated content: about 5 % copies (plus their sources).
    counts = Counter(hashlib.blake2b(b, digest_size=16).digest() for b in text + rand)
    repeated = sum(n for n in counts.values() if n > 1)
    assert 0.049 <= repeated / len(blocks) <= 0.101


def test_allocated_share_scales_the_written_kinds(tmp_path: Path) -> None:
    path, size = tmp_path / "a40.img", 64 * MiB
    stats = create_disk(path, size, seed=7, jobs=2, allocated=0.4)
    assert path.stat().st_size == size and sum(stats.by_kind.values()) == size
    # The written kinds keep the default mix's 10 : 25 : 20 : 5, now of 40 % instead of 60 %.
    expected = {"hole": 0.60, "zero": 0.40 / 6, "text": 0.40 * 25 / 60}
    expected |= {"random": 0.40 * 20 / 60, "dup": 0.40 * 5 / 60}
    for kind, frac in expected.items():
        assert abs(stats.by_kind[kind] - frac * size) <= 4 * BLOCK, kind  # rounding goes to dup
    assert stats.written == size - stats.by_kind["hole"]
    assert abs(path.stat().st_blocks * 512 / size - 0.40) < 0.01  # what the disk really holds
    data = path.read_bytes()
    blocks = [data[i : i + BLOCK] for i in range(0, size, BLOCK)]
    text = sum(1 for b in blocks if b != bytes(BLOCK) and b.isascii())
    rand = sum(1 for b in blocks if not b.isascii())
    # Dups copy text or random, so each of those counts lies between its own share and that
    # plus the dups' share.
    assert 0.40 * 25 / 60 - 0.001 <= text / len(blocks) <= 0.40 * 30 / 60 + 0.001
    assert 0.40 * 20 / 60 - 0.001 <= rand / len(blocks) <= 0.40 * 25 / 60 + 0.001


def test_allocated_edges(tmp_path: Path) -> None:
    default, same = tmp_path / "d.img", tmp_path / "s.img"
    create_disk(default, 4 * MiB + 123, seed=2, jobs=1)
    create_disk(same, 4 * MiB + 123, seed=2, jobs=1, allocated=0.6)  # the default, exactly
    assert sha256(default) == sha256(same)
    full = create_disk(tmp_path / "f.img", 4 * MiB, seed=2, jobs=1, allocated=1)
    assert full.by_kind["hole"] == 0 and full.written == 4 * MiB
    for bad in (0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="allocated"):
            create_disk(tmp_path / "x.img", MiB, allocated=bad)
    assert not (tmp_path / "x.img").exists()  # refused before the image is touched


@pytest.mark.parametrize(
    ("size", "align"),
    [
        (100 * KiB, 4 * KiB),
        (1 * MiB, 4 * KiB),
        (3 * MiB + 123, 4 * KiB),
        (1000, 4 * KiB),
        (5 * MiB + 1, 64 * KiB),
        (2 * MiB + 512, 512),
    ],
)
def test_odd_and_tiny_sizes(tmp_path: Path, size: int, align: int) -> None:
    path = tmp_path / "odd.img"
    stats = create_disk(path, size, seed=5, align=align, jobs=2)
    assert path.stat().st_size == size
    assert sum(stats.by_kind.values()) == size
    assert stats.written == size - stats.by_kind["hole"]
    assert stats.by_kind["hole"] >= size % align  # the unaligned tail stays a hole
    tail = path.read_bytes()[size - size % align :]
    assert tail == bytes(len(tail))


def changed_slots(before: bytes, after: bytes) -> int:
    return sum(
        before[i : i + MUTATION_BLOCK] != after[i : i + MUTATION_BLOCK]
        for i in range(0, len(before), MUTATION_BLOCK)
    )


def test_mutate_changes_about_pct_of_slots(tmp_path: Path) -> None:
    size = 16 * MiB + 1000  # the partial last slot is never touched
    base = tmp_path / "base.img"
    create_disk(base, size, seed=1, jobs=2)
    a, b, c = (tmp_path / f"{n}.img" for n in "abc")
    for p in (a, b, c):
        shutil.copyfile(base, p)
    sa = mutate_disk(a, 25, seed=2, jobs=1)
    sb = mutate_disk(b, 25, seed=2, jobs=2)
    mutate_disk(c, 25, seed=3, jobs=2)
    slots = size // MUTATION_BLOCK
    assert sa.writes == sb.writes == round(slots * 0.25)
    assert sa.bytes_written == sa.writes * MUTATION_BLOCK
    assert sum(sa.by_kind.values()) == sa.writes and sa.by_kind == sb.by_kind
    assert sa.by_kind["text"] > sa.by_kind["zero"] and sa.by_kind["random"] > sa.by_kind["zero"]
    assert sha256(a) == sha256(b) != sha256(c)
    assert a.stat().st_size == size
    before, after = base.read_bytes(), a.read_bytes()
    changed = changed_slots(before, after)
    # Zero writes into holes or zero extents change nothing; everything else does.
    assert sa.writes - sa.by_kind["zero"] <= changed <= sa.writes
    assert before[-1000:] == after[-1000:]


def test_mutate_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "small.img"
    create_disk(path, 1 * MiB, jobs=1)
    digest = sha256(path)
    assert mutate_disk(path, 0).writes == 0 and sha256(path) == digest
    assert mutate_disk(path, 100).writes == 16
    assert mutate_disk(path, 100.0, seed=9).by_kind == mutate_disk(path, 100, seed=9).by_kind


@given(
    st.integers(min_value=0, max_value=2**20),
    st.sampled_from(["", "B", "K", "M", "G", "T"]),
    st.sampled_from(["", "B", "iB"]),
)
def test_parse_size_units(number: int, unit: str, suffix: str) -> None:
    text = f"{number}{unit}{suffix if unit not in ('', 'B') else ''}"
    mult = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": 1024 * MiB, "T": 1024**4}[unit]
    assert parse_size(text) == number * mult
    assert parse_size(text.lower()) == number * mult


def test_parse_size_examples_and_garbage() -> None:
    assert parse_size("4G") == 4 * 1024 * MiB
    assert parse_size(" 512MiB ") == 512 * MiB
    assert parse_size("1.5K") == 1536
    for bad in ("abc", "", "-1", "4X", "1.5.2", "G", "12iB", "4 GG"):
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(bad)


def test_bad_arguments(tmp_path: Path) -> None:
    missing = tmp_path / "missing.img"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        mutate_disk(missing, 1)
    with pytest.raises(ValueError):
        create_disk(tmp_path / "x.img", 0)
    with pytest.raises(ValueError):
        create_disk(tmp_path / "x.img", MiB, align=1000)
    with pytest.raises(ValueError):
        create_disk(tmp_path / "x.img", MiB, jobs=0)
    (tmp_path / "x.img").write_bytes(bytes(MiB))
    for pct in (-1, 100.5, float("nan")):
        with pytest.raises(ValueError):
            mutate_disk(tmp_path / "x.img", pct)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["x.img", "--size", "abc"],
        ["x.img", "--size", "0"],
        ["x.img", "--size", "1M", "--align", "1000"],
        ["missing.img", "--mutate", "1"],
        ["x.img", "--mutate", "150"],
        ["x.img", "--bogus"],
        ["x.img", "-j", "zero"],
        ["x.img", "--allocated", "0"],
        ["x.img", "--allocated", "101"],
    ],
)
def test_main_errors_are_one_line(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("testdisk: error: ")


def test_main_creates_and_mutates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = str(tmp_path / "cli.img")
    assert main([img, "--size", "2M", "--seed", "4", "-j", "1"]) == 0
    assert main([img, "--mutate", "50"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("created ") and out[1].startswith("mutated ")
    ref = tmp_path / "ref.img"
    create_disk(ref, 2 * MiB, seed=4)
    mutate_disk(ref, 50, seed=2)
    assert sha256(ref) == sha256(Path(img))


def test_runs_as_module(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(testdisk.__file__).parents[1]))
    proc = subprocess.run(
        [sys.executable, "-m", "vmvault.testdisk", str(tmp_path / "m.img"), "--size", "1M"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("created ") and (tmp_path / "m.img").stat().st_size == MiB
