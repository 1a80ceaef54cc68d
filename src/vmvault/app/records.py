"""What use cases leave in the catalog besides points: job history and alerts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from vmvault.app.context import Context
from vmvault.errors import VmvaultError
from vmvault.vault.packs import pack_key
from vmvault.vault.vault import Vault

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog


class JobRecorder(Protocol):
    """Where a job's outcome goes: a row written at the end (CLI) or a queued job's row."""

    def catalog(self) -> Catalog: ...

    def finish(self, vault: Vault, vm: str | None, state: str, **fields: Any) -> None: ...


class _JobRecord:
    """A job's row in the catalog, written when the job ends.

    The catalog (SQLAlchemy) is opened on a background thread while the job runs, so a
    CLI backup does not wait ~0.3 s for imports; the row keeps the real start time.
    """

    def __init__(self, ctx: Context, kind: str) -> None:
        self.kind = kind
        self.started = datetime.now(UTC)
        self._catalog: Future[Catalog] = Future()
        threading.Thread(target=self._open, args=(ctx,), daemon=True).start()

    def _open(self, ctx: Context) -> None:
        try:
            self._catalog.set_result(ctx.catalog())
        except BaseException as exc:
            self._catalog.set_exception(exc)

    def catalog(self) -> Catalog:
        return self._catalog.result()

    def finish(self, vault: Vault, vm: str | None, state: str, **fields: Any) -> None:
        catalog = self.catalog()
        job_id = catalog.start_job(vault.config.vault_id, self.kind, vm, started=self.started)
        catalog.finish_job(job_id, state, **fields)


@contextmanager
def recorded_job(ctx: Context, vault: Vault, kind: str, vm: str | None) -> Iterator[_JobRecord]:
    record = _JobRecord(ctx, kind)
    try:
        yield record
    except VmvaultError as exc:
        record.finish(vault, vm, "failed", error=(exc.code, exc.message))
        raise
    except BaseException as exc:  # a bug or an interrupt: recorded as failed too
        record.finish(vault, vm, "failed", error=("internal", f"{type(exc).__name__}: {exc}"))
        raise


def raise_alert(ctx: Context, vault: Vault, kind: str, message: str, **fields: Any) -> int | None:
    """Record an alert in the catalog; the server or scheduler delivers it."""

    return store_alert(ctx.catalog(), vault.config.vault_id, kind, message, **fields)


def report_damaged_points(
    catalog: Catalog, vault: Vault, damaged: dict[str, str], *, vm: str | None = None
) -> None:
    """One ``point_damaged`` alert per damaged point (raised once): its object unreadable,
    or a verify found damage (then ``vm`` is known)."""

    for point_id, message in damaged.items():
        store_alert(
            catalog,
            vault.config.vault_id,
            "point_damaged",
            f"recovery point {point_id} is damaged: {message}",
            vm=vm,
            details={"point": point_id, "error": message},
            dedupe_key=f"point_damaged:{point_id}",
        )


def report_lost_packs(catalog: Catalog, vault: Vault) -> list[str]:
    """A ``vault_damaged`` alert for packs the index names but the backend lacks."""

    lost = [pack_key(p) for p in vault.index.missing_packs()]
    if lost:
        store_alert(
            catalog,
            vault.config.vault_id,
            "vault_damaged",
            f"{len(lost)} pack(s) of the vault are missing or damaged; backups store "
            "their chunks again, older points that used them are damaged (run `vmvault "
            "check`)",
            details={"missing_packs": lost},
            dedupe_key="packs_missing:" + ",".join(sorted(lost)),
        )
    return lost


def store_alert(
    catalog: Catalog, vault_id: str, kind: str, message: str, **fields: Any
) -> int | None:
    """``alerts.store.raise_alert``, imported on first use: it needs SQLAlchemy (~0.3 s),
    which a CLI backup only loads on its catalog thread, while the disks are read."""
    from vmvault.alerts.store import raise_alert

    return raise_alert(catalog, vault_id, kind, message, **fields)
