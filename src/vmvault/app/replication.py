"""Keeping a copy of the vault elsewhere (``run_replicate``), and what the copy remembers.

The copy is a vault of its own (its own id, its own passphrase if asked, its own settings,
retention and immutability, its own garbage collection) that shares the vault's master
keys, so what replication sends is the sealed objects as they are (engine/replicate.py).
Restoring from it needs nothing of the vault: it is opened like any vault
(``restore --from``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext, suppress
from datetime import UTC, datetime
from typing import Any

from vmvault.app.context import Context
from vmvault.app.records import JobRecorder, raise_alert, recorded_job
from vmvault.app.retention import run_prune
from vmvault.app.vaults import run_gc
from vmvault.backends.url import is_directory_vault
from vmvault.engine.progress import ProgressCallback, no_progress
from vmvault.engine.replicate import DEFAULT_SAMPLE, ReplicationReport, replicate
from vmvault.errors import UsageError, VmvaultError
from vmvault.inventory import Inventory
from vmvault.model.jobs import JobKind
from vmvault.protection import settings
from vmvault.vault.documents import AAD_REPLICA, AAD_SETTINGS, REPLICA_KEY, SETTINGS_KEY
from vmvault.vault.locks import VaultLock
from vmvault.vault.replica import replica_doc, save_replica_doc
from vmvault.vault.vault import CONFIG_KEY, Vault

COPY_PASSPHRASE_ENV = "VMVAULT_COPY_PASSPHRASE"
COPY_PASSPHRASE_FILE_ENV = "VMVAULT_COPY_PASSPHRASE_FILE"


def copy_context(ctx: Context, location: str, passphrase_file: str | None = None) -> Context:
    """A context for the copy at ``location``: the same catalog and backends as ``ctx``; the
    copy's own passphrase (``passphrase_file``, or the copy's variables) if it has one,
    else the vault's."""
    own_file = passphrase_file or os.environ.get(COPY_PASSPHRASE_FILE_ENV)
    own = None if own_file else os.environ.get(COPY_PASSPHRASE_ENV)
    return Context(
        location,
        catalog_url=ctx.catalog_url,
        passphrase_file=own_file or (None if own else ctx.passphrase_file),
        backend_factory=ctx.backend_factory,
        ask_passphrase=ctx.ask_passphrase,
        known_passphrase=own,
        # What replication reads back from the copy must come from the copy's store, not
        # from a local copy of what it just sent.
        cache=False,
    )


def open_copy(source: Vault, copy_ctx: Context, passphrase: str) -> tuple[Vault, bool]:
    """The copy at ``copy_ctx``'s location, made if there is none; (vault, created).

    An existing vault there must be a copy of ``source`` (the same master keys): any other
    vault is refused, never written into."""
    backend = copy_ctx.backend()
    if backend.describe() == source.backend.describe():
        raise UsageError("the copy must be somewhere else than the vault itself")
    if backend.exists(CONFIG_KEY):
        copy = Vault.open(backend, passphrase, load_index=False)
        if not copy.shares_keys(source):
            raise UsageError(
                f"{backend.describe()} holds another vault, not a copy of this one; "
                "choose an empty place for the copy"
            )
        return copy, False
    _check_empty_place(copy_ctx.vault_path, backend)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    origin: dict[str, Any] = {
        "source_vault_id": source.config.vault_id,
        "source": source.backend.describe(),
        "created": now,
        "pruned": [],
    }
    # The copy starts with the vault's protection settings (immutability, soft delete,
    # the retention each VM's points are kept for); from then on they are its own.
    documents: dict[str, tuple[bytes, Mapping[str, Any]]] = {REPLICA_KEY: (AAD_REPLICA, origin)}
    with suppress(VmvaultError):
        documents[SETTINGS_KEY] = (AAD_SETTINGS, dict(settings(source)))
    copy = Vault.init_copy(backend, source, passphrase, documents=documents)
    return copy, True


def _check_empty_place(location: str, backend: Any) -> None:
    if is_directory_vault(location):
        from pathlib import Path

        root = Path(location).absolute()
        if root.exists() and not root.is_dir():
            raise UsageError(f"{root} exists and is not a directory")
        if root.is_dir() and any(root.iterdir()):
            raise UsageError(f"{root} is not empty and not a vault; choose an empty directory")
        return
    check_bucket = getattr(getattr(backend, "inner", backend), "check_bucket", None)
    if check_bucket is not None:
        check_bucket()


def run_replicate(
    ctx: Context,
    to: str,
    *,
    passphrase_file: str | None = None,
    vm: str | None = None,
    sample: int = DEFAULT_SAMPLE,
    keep: Inventory | None = None,
    progress: ProgressCallback = no_progress,
    recorder: JobRecorder | None = None,
) -> ReplicationReport:
    """Copy to the copy at ``to`` (made if missing) every point it lacks, all of ``vm``'s
    when given; records a ``replicate`` job (on ``recorder``'s row if given) and, in the
    copy, when it last succeeded. ``keep``: then apply the copy's own retention, each VM's
    policy in that inventory (see ``copy_retention``), and collect the copy's garbage."""
    copy_ctx = copy_context(ctx, to, passphrase_file)
    passphrase = copy_ctx.passphrase()
    # The vault's lock first: its garbage collection sweeps nothing while the copy reads.
    with ctx.session(JobKind.REPLICATE) as source:
        copy, created = open_copy(source, copy_ctx, passphrase)
        with (
            recorded_job(ctx, source, JobKind.REPLICATE, vm)
            if recorder is None
            else nullcontext(recorder) as record
        ):
            try:
                report = _replicate_locked(source, copy, vm, sample, progress)
                if keep is not None:
                    report.retention = _copy_retention(copy_ctx, keep)
            except VmvaultError as exc:
                raise_alert(
                    ctx,
                    source,
                    "replication_failed",
                    f"replication to {copy.backend.describe()} failed: {exc.message}",
                    details={"destination": copy.backend.describe()},
                )
                raise
            _record_copied_points(ctx, copy, report)
            details = {
                **report.to_dict(),
                "created": created,
                "copy_vault_id": copy.config.vault_id,
            }
            record.finish(
                source,
                vm,
                "partially_succeeded" if report.skipped else "succeeded",
                counters={"bytes_sent": report.bytes, "bytes_written": report.bytes},
                details=details,
            )
    return report


def _replicate_locked(
    source: Vault, copy: Vault, vm: str | None, sample: int, progress: ProgressCallback
) -> ReplicationReport:
    """The copy's part, under a lock of the copy (its garbage collection waits too)."""
    with VaultLock(copy.backend, JobKind.REPLICATE):
        copy.load_index()
        origin = replica_doc(copy) or {}
        every = source.points()
        still_kept = {p["id"] for p in every}
        report = replicate(
            source,
            copy,
            points=[p for p in every if vm is None or p["vm"] == vm],
            exclude=set(origin.get("pruned", [])) & still_kept,
            sample=sample,
            progress=progress,
        )
        if origin:  # a copy made by hand (a directory copied) has no origin to update
            origin["last_success"] = datetime.now(UTC).isoformat(timespec="seconds")
            # Points the vault no longer has cannot come back: no need to remember them.
            origin["pruned"] = sorted(set(origin.get("pruned", [])) & still_kept)
            save_replica_doc(copy, origin)
        return report


def copy_retention_inventory(inventory: Inventory, policy: str | None) -> Inventory:
    """The inventory by which a copy keeps points: each VM's own policy, or ``policy`` for
    every VM that has one (a copy may keep longer than the vault)."""
    if policy is None:
        return inventory
    vms = [vm.model_copy(update={"policy": policy}) if vm.policy else vm for vm in inventory.vms]
    return inventory.model_copy(update={"vms": vms})


def _copy_retention(copy_ctx: Context, keep: Inventory) -> dict[str, Any]:
    """The copy's own retention (its immutability and soft delete apply, as in any vault:
    a locked copy refuses a shorter retention), then its garbage collection."""
    pruned = run_prune(copy_ctx, keep)
    collected = run_gc(copy_ctx)
    return {
        "pruned": sum(len(v["prune"]) for v in pruned["vms"].values()),
        "gc": collected.to_dict(),
    }


def _record_copied_points(ctx: Context, copy: Vault, report: ReplicationReport) -> None:
    """The copy's catalog rows, so `list --vault COPY` shows them (best effort: the copy
    is right whatever the catalog says, and `vault reindex` rebuilds the rows)."""
    with suppress(VmvaultError):
        catalog = ctx.catalog()
        for point_id in report.copied:
            catalog.record_point(copy.config.vault_id, copy.get_point(point_id))
