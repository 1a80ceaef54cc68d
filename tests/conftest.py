"""Shared fixtures: a vault in a temporary directory, a catalog beside it, test images.

Tests live in ``unit/<package>`` (pure functions and decoders), ``integration`` (the engine,
vault, catalog, jobs and server on this machine's files and processes) and ``system`` (real
systems beside vmvault: a booted guest, LVM, PostgreSQL, a browser; each marked). What they
share is in ``support/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from support.cli import PASSPHRASE
from vmvault import testdisk
from vmvault.app.context import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, Context
from vmvault.app.vaults import init_vault
from vmvault.backends.cache import CACHE_DIR_ENV, CACHE_LIMIT_ENV, NO_CACHE_ENV

# The object-store fixtures: S3 (s3_server, s3_vault) and Azure Blob (azurite_server,
# azure_vault); Redis (redis_server, redis_url: a fleet's broker). Each server starts only
# for a test using it.
pytest_plugins = ["support.s3kit", "support.azuritekit", "support.rediskit"]


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    monkeypatch.delenv(PASSPHRASE_FILE_ENV, raising=False)


@pytest.fixture(autouse=True)
def _cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each test its own local cache of object-store vaults, never the user's ~/.cache (a
    directory of its own: some tests want their tmp_path empty)."""
    root = tmp_path_factory.mktemp("cache") / "vmvault"
    monkeypatch.setenv(CACHE_DIR_ENV, str(root))
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)
    monkeypatch.delenv(CACHE_LIMIT_ENV, raising=False)
    return root


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
