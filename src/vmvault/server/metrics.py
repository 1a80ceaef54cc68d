"""Prometheus metrics, collected from the catalog and the vault at each scrape."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vmvault.model.point import RecoveryPoint

if TYPE_CHECKING:
    from vmvault.server.state import ServerState


class _Collector(Collector):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        jobs = GaugeMetricFamily(
            "vmvault_jobs", "Jobs by kind and state.", labels=["kind", "state"]
        )
        alerts = GaugeMetricFamily("vmvault_alerts", "Alerts raised, by kind.", labels=["kind"])
        for kind, job_state, count in state.catalog.job_counts(state.vault_id):
            jobs.add_metric([kind, job_state], count)
        for kind, count in state.catalog.alert_counts(state.vault_id):
            alerts.add_metric([kind], count)
        yield jobs
        yield alerts
        points = GaugeMetricFamily(
            "vmvault_recovery_points", "Recovery points per VM.", labels=["vm"]
        )
        last = GaugeMetricFamily(
            "vmvault_last_backup_timestamp_seconds",
            "When the VM's newest recovery point completed (Unix time).",
            labels=["vm"],
        )
        stored = GaugeMetricFamily(
            "vmvault_stored_bytes", "Bytes the VM's backups wrote into the vault.", labels=["vm"]
        )
        per_vm: dict[str, list[RecoveryPoint]] = {}
        for point in state.points():
            per_vm.setdefault(str(point["vm"]), []).append(point)
        for vm, rows in sorted(per_vm.items()):
            points.add_metric([vm], len(rows))
            newest = rows[-1].get("completed") or rows[-1]["created"]
            last.add_metric([vm], datetime.fromisoformat(newest).timestamp())
            total = sum(d["stats"]["stored"] for p in rows for d in p["disks"])
            stored.add_metric([vm], total)
        yield points
        yield last
        yield stored


def render(state: ServerState) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(state))
    return generate_latest(registry), CONTENT_TYPE_LATEST
