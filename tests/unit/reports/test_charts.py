"""The reports page's charts: drawing one leaves the server's log alone (matplotlib logged
four INFO lines about categorical units on every visit) and still names the VMs and days."""

from __future__ import annotations

import logging

import pytest

from vmvault.reports.charts import render_chart


def test_drawing_the_charts_logs_nothing_at_info(caplog: pytest.LogCaptureFixture) -> None:
    figures = {
        "per_day": [
            {"day": "2026-11-28", "stored": 3 << 20, "total": 3 << 20},
            {"day": "2026-11-29", "stored": 1 << 20, "total": 4 << 20},
        ],
        "per_vm": {
            name: {"duration": 0.26, "throughput": 9e6, "success_rate": 1.0, "change_rate": 0.02}
            for name in ("chart-web01", "chart-db01")
        },
    }
    with caplog.at_level(logging.DEBUG):
        vms = render_chart("vms", figures)
        usage = render_chart("usage", figures)
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    # the names are still the bars' labels (matplotlib writes each text as a comment)
    assert b"chart-web01" in vms and b"chart-db01" in vms
    assert b"11-28" in usage and b"11-29" in usage
