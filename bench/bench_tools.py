"""How each backup tool is driven: its commands, environment and where its restore lands.

Every tool gets a fresh repository and fresh caches for each repetition, encryption on
(restic always, borg ``repokey``, Benji AES-256-GCM, vmvault always), and a source
directory holding only the image, so they all back up exactly the same bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import bench_proc
import benji_venv
from stores import Remote

PASSPHRASE = "vmvault bench passphrase"
# Settings from the user's shell must not change what is measured: the tools' own, and the
# object stores' credentials, endpoints, proxies and CA bundles.
_FOREIGN_ENV_PREFIXES = ("VMVAULT_", "RESTIC_", "BORG_", "AWS_", "AZURE_")
_FOREIGN_ENV = {"http_proxy", "https_proxy", "no_proxy", "all_proxy", "requests_ca_bundle"}
_APT_PACKAGES = {"restic": "restic", "borg": "borgbackup"}
ALL_TOOLS = ("vmvault", "restic", "borg", "benji")


def clean_env() -> dict[str, str]:
    """The current environment without any tool's own configuration variables."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_FOREIGN_ENV_PREFIXES) and k.lower() not in _FOREIGN_ENV
    }


def vmvault_command() -> list[str]:
    """The ``vmvault`` entry point of the Python running this script (the project's venv)."""
    beside = Path(sys.executable).parent / "vmvault"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("vmvault")
    if found:
        return [found]
    return [sys.executable, "-c", "from vmvault.cli.entry import run; run()"]


@dataclass
class Tool:
    """One tool in one repetition: a repository and cache directory under ``home``."""

    name: str
    home: Path  # everything this run creates: repository (if local), caches, catalog
    remote: Remote | None = None  # the repository on an object store instead of home/repo

    @property
    def repo(self) -> Path:
        return self.home / "repo"

    @property
    def catalog(self) -> Path:
        """vmvault's catalog database, beside the run's directory: catalog-<tool>-<rep>.db."""
        return self.home.parent / f"catalog-{self.home.name}.db"

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Files the tool needs in ``home`` before its ``init`` (none for most)."""

    def init_cmd(self) -> list[str]:
        raise NotImplementedError

    def backup_cmd(self, number: int, image: Path) -> list[str]:
        raise NotImplementedError

    def restore_cmd(self, target_dir: Path, image: Path) -> tuple[list[str], Path]:
        """(argv, cwd) that restores the latest point into the empty ``target_dir``."""
        raise NotImplementedError

    def restored_file(self, target_dir: Path, image: Path) -> Path | None:
        """Where the restore put the image: restic and borg recreate its full path."""
        found = sorted(target_dir.rglob(image.name))
        return found[0] if found else None


class Vmvault(Tool):
    def env(self) -> dict[str, str]:
        remote = self.remote.vmvault_env if self.remote else {}
        return (
            clean_env()
            | remote
            | {
                "VMVAULT_PASSPHRASE": PASSPHRASE,
                "VMVAULT_VAULT": self.remote.vmvault_vault if self.remote else str(self.repo),
                "VMVAULT_CATALOG": f"sqlite:///{self.catalog}",
                # The host's caches (the chunk index, an object store's copies) of this run's
                # vault, removed with the run, never the user's ~/.cache (clean_env drops any
                # VMVAULT_CACHE_DIR given to the bench).
                "VMVAULT_CACHE_DIR": str(self.home / "cache"),
            }
        )

    def init_cmd(self) -> list[str]:
        return [*vmvault_command(), "init", "--json"]

    def backup_cmd(self, number: int, image: Path) -> list[str]:
        return [*vmvault_command(), "backup", str(image), "--vm", "bench", "--json"]

    def restore_cmd(self, target_dir: Path, image: Path) -> tuple[list[str], Path]:
        target = target_dir / image.name
        return [*vmvault_command(), "restore", "latest", str(target), "--json"], target_dir


class Restic(Tool):
    def env(self) -> dict[str, str]:
        remote = self.remote.restic_env if self.remote else {}
        return (
            clean_env()
            | remote
            | {
                "RESTIC_PASSWORD": PASSPHRASE,
                "RESTIC_REPOSITORY": self.remote.restic_repo if self.remote else str(self.repo),
                "RESTIC_CACHE_DIR": str(self.home / "cache"),
            }
        )

    def _restic(self) -> list[str]:
        return ["restic", *(self.remote.restic_args if self.remote else [])]

    def init_cmd(self) -> list[str]:
        return [*self._restic(), "init", "-q"]

    def backup_cmd(self, number: int, image: Path) -> list[str]:
        return [*self._restic(), "backup", str(image.parent)]

    def restore_cmd(self, target_dir: Path, image: Path) -> tuple[list[str], Path]:
        return [*self._restic(), "restore", "latest", "--target", str(target_dir)], target_dir


class Borg(Tool):
    def env(self) -> dict[str, str]:
        return clean_env() | {
            "BORG_PASSPHRASE": PASSPHRASE,
            "BORG_REPO": str(self.repo),
            "BORG_BASE_DIR": str(self.home / "base"),  # cache, config and security dirs
        }

    def init_cmd(self) -> list[str]:
        return ["borg", "init", "-e", "repokey"]

    def backup_cmd(self, number: int, image: Path) -> list[str]:
        return ["borg", "create", "--compression", "zstd,3", f"::b{number}", str(image.parent)]

    def restore_cmd(self, target_dir: Path, image: Path) -> tuple[list[str], Path]:
        return ["borg", "extract", "::b2"], target_dir  # extracts into the working directory


class Benji(Tool):
    """Benji 0.17 from its own venv (benji_venv.py), configured in ``home/benji.yaml``.

    ``repo`` holds both what Benji keeps: ``storage/`` (its ``file`` storage: the blocks,
    and a copy of each version's metadata) and ``benji.sqlite`` (the database with the
    block lists), so the repository size counts both. Versions get fixed names (``b1``,
    ``b2``) so the incremental can name its base.
    """

    NOTE = (
        "Benji {version} in its own venv (bench/work/benji-venv{loosened}): file storage, "
        "SQLite database, zstd level 3 + AES-256-GCM (key by PBKDF2, 20000 iterations), "
        "4 MiB blocks, BLAKE2b-256 block hashes (Benji keeps no GCM tag: a block is checked "
        "by its hash in the database). Incremental = `backup --base-version b1` without "
        "hints: it reads and hashes the whole image, like vmvault without a dirty bitmap. "
        "Restore with `--sparse` (only all-zero 4 MiB blocks stay holes), each block "
        "re-hashed. Repo MB = storage directory + SQLite database."
    )

    @property
    def config(self) -> Path:
        return self.home / "benji.yaml"

    def env(self) -> dict[str, str]:
        return clean_env()

    def prepare(self) -> None:
        self.repo.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            benji_venv.config_text(
                database=self.repo / "benji.sqlite",
                storage=self.repo / "storage",
                passphrase=PASSPHRASE,
            )
        )

    def _benji(self) -> list[str]:
        return [*benji_venv.benji_command(), "-c", str(self.config)]

    def init_cmd(self) -> list[str]:
        return [*self._benji(), "database-init"]

    def backup_cmd(self, number: int, image: Path) -> list[str]:
        base = ["--base-version", f"b{number - 1}"] if number > 1 else []
        return [
            *self._benji(),
            "-m",
            "backup",
            "--uid",
            f"b{number}",
            *base,
            f"file:{image}",
            "bench",
        ]

    def restore_cmd(self, target_dir: Path, image: Path) -> tuple[list[str], Path]:
        target = target_dir / image.name
        return [*self._benji(), "restore", "--sparse", "b2", f"file:{target}"], target_dir


TOOL_CLASSES: dict[str, type[Tool]] = {
    "vmvault": Vmvault,
    "restic": Restic,
    "borg": Borg,
    "benji": Benji,
}


REMOTE_TOOLS = ("vmvault", "restic")  # the tools that speak S3 and Azure Blob (borg does not)


def make_tool(name: str, home: Path, remote: Remote | None = None) -> Tool:
    return TOOL_CLASSES[name](name, home, remote)


def _apt_install(packages: list[str]) -> bool:
    """``apt-get install``; an ``apt-get update`` only when the first attempt fails."""
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *packages]
    for attempt in range(2):
        if attempt:
            bench_proc.progress("setup", "apt-get install failed; running apt-get update")
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return True
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    bench_proc.progress("setup", "apt-get install failed: " + " | ".join(tail))
    return False


def benji_note() -> str | None:
    """How Benji is installed and configured, for the report; None if it is not installed."""
    found = benji_venv.installed()
    if found is None:
        return None
    loosened = ", ".join(f"`{used}` for `{asked}`" for asked, used in found.loosened.items())
    return Benji.NOTE.format(
        version=found.version, loosened=f"; installed {loosened}" if loosened else ""
    )


def ensure_tools(wanted: list[str]) -> dict[str, str]:
    """Install missing restic/borg with apt-get when possible, and Benji in its venv.

    Returns {tool: reason} for tools that cannot be used; the benchmark goes on without them.
    """
    missing = [t for t in wanted if t in _APT_PACKAGES and shutil.which(t) is None]
    if missing:
        packages = [_APT_PACKAGES[t] for t in missing]
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            print(
                f"bench: {', '.join(missing)} not installed and cannot apt-get install "
                f"{' '.join(packages)} (needs root and apt); continuing without them",
                file=sys.stderr,
            )
        else:
            bench_proc.progress("setup", f"apt-get install {' '.join(packages)}")
            _apt_install(packages)
    unavailable = {}
    for t in wanted:
        if t in _APT_PACKAGES and shutil.which(t) is None:
            unavailable[t] = "not available"
    if "benji" in wanted:
        try:
            benji_venv.ensure(PASSPHRASE)
        except (benji_venv.BenjiUnavailable, OSError) as exc:
            unavailable["benji"] = f"not available: {exc}"
    if unavailable:
        print(f"bench: not available: {', '.join(unavailable)}", file=sys.stderr)
    return unavailable


def tool_version(name: str) -> str:
    """First line of the tool's version output, for the report."""
    if name == "benji":
        version = benji_venv.version_info()
        return f"benji {version}" if version else "not available"
    argv = {
        "vmvault": [*vmvault_command(), "version"],
        "restic": ["restic", "version"],
        "borg": ["borg", "--version"],
        "zstd": ["zstd", "--version"],
    }[name]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if done.returncode == 0 and lines else "not available"
