"""Benji 0.17 in a virtualenv of its own, built by the benchmark when it is missing.

Benji 0.17.0 (2022) pins its dependencies to releases of its time; some of them no longer
build on today's Python. So Benji itself is installed with ``--no-deps`` and its runtime
requirements, read from its own metadata, are added one at a time: first as Benji pins
them, and only a requirement that does not install is tried again with its upper bound
dropped. Each ``pip install`` also names every requirement settled before it, so a later
one cannot pull in what an earlier pin excludes (alembic's newest wants SQLAlchemy 2,
which Benji 0.17 does not run on). What was loosened is recorded beside the venv and named
in the report. The venv is scratch under bench/work (gitignored) and is kept between runs.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import bench_proc

BENJI_VERSION = "0.17.0"
VENV = Path(__file__).resolve().parent / "work" / "benji-venv"
# Written last, once Benji answered with this venv: a venv without it is half-built.
MANIFEST = VENV / "bench-install.json"
# A configuration only for `benji version-info`, which refuses to start without one.
PROBE_CONFIG = VENV / "version-probe.yaml"
# Benji's zstd transform comes from its optional "compression" extra; the benchmark uses it.
EXTRAS = {"compression"}
# Where dropping the upper bound is not enough. ruamel.yaml < 0.16 does not build on
# Python >= 3.11 (its C extension includes the removed longintrepr.h), and 0.18 removed the
# `ruamel.yaml.load(f, Loader=...)` call benji/config.py makes: 0.17 is the series that both
# installs and still has it.
LOOSENED_INSTEAD = {"ruamel.yaml": "ruamel.yaml>0.15,<0.18"}
PIP_TIMEOUT = 600  # seconds for one pip install; a wheel may have to be built


class BenjiUnavailable(Exception):
    """Benji could not be installed or does not start; the message says where it stopped."""


@dataclass
class Installed:
    """What the venv holds: Benji's version and the requirements installed with other pins."""

    version: str
    loosened: dict[str, str] = field(default_factory=dict)  # Benji's requirement -> used


def benji_command() -> list[str]:
    return [str(VENV / "bin" / "benji")]


def _pip(args: list[str], log: Path) -> bool:
    """``pip ARGS`` in Benji's venv, its output appended to ``log``; True if it succeeded."""
    with log.open("a") as out:
        out.write(f"\n$ pip {' '.join(args)}\n")
        out.flush()
        try:
            done = subprocess.run(
                [str(VENV / "bin" / "pip"), "--disable-pip-version-check", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=PIP_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            out.write(f"timed out after {PIP_TIMEOUT} s\n")
            return False
    return done.returncode == 0


def _requirements() -> list[str]:
    """Benji's runtime requirements and those of EXTRAS, from its installed metadata."""
    script = "import json, importlib.metadata as m; print(json.dumps(m.requires('benji') or []))"
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", script], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenjiUnavailable(f"cannot read Benji's requirements: {done.stderr.strip()}")
    wanted = []
    for line in json.loads(done.stdout):
        requirement, _, marker = (part.strip() for part in line.partition(";"))
        extra = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if extra is None:
            # pip evaluates any other marker (a Python version, say) itself.
            wanted.append(f"{requirement}; {marker}" if marker else requirement)
        elif extra.group(1) in EXTRAS:
            wanted.append(requirement)
    return wanted


def _name(requirement: str) -> str:
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    return found.group(0) if found else requirement


def _without_upper_bound(requirement: str) -> str:
    """``name (<2,>=1.4)`` -> ``name>=1.4``: the upper bounds (<, <=, ~=, ==) turned into
    nothing or a lower bound, the marker kept."""
    text, _, marker = (part.strip() for part in requirement.partition(";"))
    name = _name(text)
    specifiers = text[len(name) :].strip().strip("()")
    kept = []
    for spec in (s.strip() for s in specifiers.split(",") if s.strip()):
        operator = re.match(r"[<>=!~]+", spec)
        op = operator.group(0) if operator else ""
        if op in ("<", "<="):
            continue
        kept.append(">=" + spec[len(op) :].strip() if op in ("~=", "==") else spec)
    loose = name + ",".join(kept)
    return f"{loose}; {marker}" if marker else loose


def _loosened(requirement: str) -> str:
    return LOOSENED_INSTEAD.get(_name(requirement).lower(), _without_upper_bound(requirement))


def version_info() -> str | None:
    """``benji version-info``'s version (it loads a configuration, so this also checks that
    the YAML and schema libraries work), or None if Benji does not answer."""
    try:
        done = subprocess.run(
            [*benji_command(), "-c", str(PROBE_CONFIG), "-m", "version-info"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        version = json.loads(done.stdout)["version"] if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        return None
    return str(version) if version else None


def _database_init_error() -> str | None:
    """The last line of what ``benji database-init`` said on the probe's configuration if
    it failed, else None."""
    try:
        done = subprocess.run(
            [*benji_command(), "-c", str(PROBE_CONFIG), "database-init"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return repr(exc)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1][-300:] if lines else f"exit {done.returncode}"


def installed() -> Installed | None:
    """The venv's manifest, if a complete install is there."""
    try:
        doc = json.loads(MANIFEST.read_text())
        return Installed(doc["version"], doc.get("loosened", {}))
    except (OSError, ValueError, KeyError):
        return None


def config_text(*, database: Path, storage: Path, passphrase: str) -> str:
    """Benji 0.17's configuration (configurationVersion 1) for the benchmark: a ``file``
    storage at ``storage``, a SQLite database, zstd level 3 then AES-256-GCM on every block
    (the order Benji applies them), 4 MiB blocks, BLAKE2b-256 block hashes (its default)."""
    salt = base64.b64encode(b"vmvault bench benji salt 32 byte").decode()
    return textwrap.dedent(
        f"""\
        configurationVersion: '1'
        databaseEngine: 'sqlite:///{database}'
        defaultStorage: bench
        blockSize: 4194304
        hashFunction: 'BLAKE2b,digest_bits=256'
        storages:
          - name: bench
            storageId: 1
            module: file
            configuration:
              path: '{storage}'
              activeTransforms: [zstd, aes_256_gcm]
        transforms:
          - name: zstd
            module: zstd
            configuration:
              level: 3
          - name: aes_256_gcm
            module: aes_256_gcm
            configuration:
              # The key is derived with PBKDF2 from the passphrase (Benji's documented
              # iteration count); each block gets its own key, wrapped by this one.
              kdfSalt: '{salt}'
              kdfIterations: 20000
              password: '{passphrase}'
        ios:
          - name: file
            module: file
        """
    )


def ensure(passphrase: str) -> Installed:
    """Benji's venv, built when missing or half-built. Raises BenjiUnavailable."""
    found = installed()
    if found is not None and version_info() == found.version:
        return found
    shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    bench_proc.progress("setup", f"building Benji {BENJI_VERSION}'s venv in {VENV}")
    # The Python running the bench: its base interpreter, not the project's venv, is used.
    made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True)
    if made.returncode != 0:
        raise BenjiUnavailable(f"python -m venv failed: {made.stderr.strip()[-300:]}")
    log = VENV / "install.log"
    if not _pip(["install", "--no-deps", f"benji=={BENJI_VERSION}"], log):
        raise BenjiUnavailable(f"pip install benji=={BENJI_VERSION} failed (see {log})")
    loosened: dict[str, str] = {}
    settled: list[str] = []
    for requirement in _requirements():
        if _pip(["install", *settled, requirement], log):
            settled.append(requirement)
            continue
        loose = _loosened(requirement)
        bench_proc.progress("setup", f"benji: {requirement!r} does not install; trying {loose!r}")
        if loose == requirement or not _pip(["install", *settled, loose], log):
            raise BenjiUnavailable(f"cannot install Benji's requirement {requirement} (see {log})")
        settled.append(loose)
        loosened[requirement] = loose
    probe_database = VENV / "probe.sqlite"
    PROBE_CONFIG.write_text(
        config_text(database=probe_database, storage=VENV / "probe", passphrase=passphrase)
    )
    # database-init runs SQLAlchemy and alembic, version-info the configuration's YAML and
    # schemas: together most of what a backup needs besides the storage.
    init_error = _database_init_error()
    probe_database.unlink(missing_ok=True)
    if init_error:
        raise BenjiUnavailable(f"benji database-init fails in {VENV}: {init_error}")
    version = version_info()
    if version is None:
        raise BenjiUnavailable(f"benji version-info fails in {VENV} (see {log})")
    MANIFEST.write_text(json.dumps({"version": version, "loosened": loosened}, indent=2) + "\n")
    if loosened:
        bench_proc.progress("setup", f"benji {version}: loosened {loosened}")
    return Installed(version, loosened)
