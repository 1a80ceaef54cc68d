"""Shared fixtures: a vault in a temporary directory, a catalog beside it, test images.

Tests live in ``unit/<package>`` (pure functions and decoders), ``integration`` (the engine,
vault, catalog, jobs and server on this machine's files and processes) and ``system`` (real
systems beside vmvault: a booted guest, LVM, PostgreSQL, a browser; each marked). What they
share is in ``support/``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.cli import PASSPHRASE
from vmvault import testdisk
from vmvault.app.context import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, Context
from vmvault.app.vaults import init_vault
from vmvault.vault.localindex import CACHE_DIR_ENV

# The object-store fixtures: S3 (s3_server, s3_vault) and Azure Blob (azurite_server,
# azure_vault); each server starts only for a test using it.
pytest_plugins = ["support.s3kit", "support.azuritekit"]


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The hosts' caches (the chunk index under <vault id>/chunk-index/) of every test go to
    one temporary folder, never the real ~/.cache; vault ids are random, so tests do not
    share an index. Subprocesses (the CLI run as a program) inherit the variable."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_DIR_ENV, str(root))
        yield root


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    monkeypatch.delenv(PASSPHRASE_FILE_ENV, raising=False)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    context = Context(str(tmp_path / "vault"), f"sqlite:///{tmp_path / 'catalog.db'}")
    init_vault(context)
    return context


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "disk.img", size: int = 24 * testdisk.MiB, seed: int = 1) -> Path:
        path = tmp_path / name
        testdisk.create_disk(path, size, seed=seed, jobs=1)
        return path

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder: ``-m unit`` runs the fast ones only."""
    for item in items:
        parts = Path(str(item.path)).relative_to(Path(__file__).parent).parts
        if parts[0] in ("unit", "integration", "system"):
            item.add_marker(parts[0])
