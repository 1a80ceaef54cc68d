"""`plan` and `cost` at 80 and 100 columns: every figure whole with its unit (never
'129.8' over 'MiB'), no VM name or header cut with "…"; a long name wraps in its column."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from support.tables import column
from vmvault.cli.render import planning as render_planning

LONG_VM = "db01-application-server-east-02"
MIB = 2**20


def _printed(monkeypatch: pytest.MonkeyPatch, width: int, print_it: Any, *args: Any) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(render_planning, "console", console)
    print_it(*args)
    text = console.export_text()
    assert "…" not in text
    assert max(map(len, text.splitlines())) <= width
    return text


def _estimate(data: int, rate: float, changed: int) -> dict[str, Any]:
    measured = "measured (3 backups)"
    return {
        "tonight": "incremental",
        "data_source": "last backup",
        "initial": {"data_bytes": data, "total_s": 1.9, "rate_mb_s": 57.2, "rate_source": measured},
        "incremental": {
            "changed_bytes": changed,
            "total_s": 4000.0,
            "rate_mb_s": rate,
            "rate_source": "Azure's rates",
            "changed_source": "daily change 5% of the data",
        },
    }


def _plan() -> dict[str, Any]:
    job = {
        "due": "2026-11-30T22:30+00:00",
        "start": "2026-11-30T22:30+00:00",
        "end": "2026-12-01T00:02+00:00",
        "wait_s": 0,
        "late": False,
    }
    return {
        "day": "2026-11-30",
        "jobs": [{**job, "vm": LONG_VM}, {**job, "vm": "web01"}],
        "estimates": {
            LONG_VM: _estimate(int(129.8 * MIB), 123.3, 640 * 1024),
            "web01": _estimate(int(40.7 * MIB), 76.3, int(6.5 * MIB)),
        },
        "pools": {"ssd": {"peak_mb_s": 385.4, "egress_mb_s": 457.8, "demand_peak_mb_s": 385.4}},
        "summary": {"fits": True},
        "findings": [],
        "stagger": None,
    }


@pytest.mark.parametrize("width", [80, 100])
def test_plan_keeps_every_figure_whole(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    text = _printed(monkeypatch, width, render_planning.print_plan, _plan())
    for figure in ("129.8 MiB", "40.7 MiB", "54.6 MiB/s", "117.6 MiB/s", "640.0 KiB", "1:07 h"):
        assert figure in text, figure
    assert "00:02 +1d" in text
    assert LONG_VM in column(text, "vm", "kind")  # folded within its column, whole


def _cost_row(vm: str, protected: int, stored: int) -> dict[str, Any]:
    return {
        "vm": vm,
        "protected_instance_bytes": protected,
        "instances": 1,
        "instance_cost": "10.00",
        "storage_bytes": stored,
        "storage_cost": "1234.56",
        "total": "1244.56",
        "billed": True,
        "reason": "protected",
    }


@pytest.mark.parametrize("width", [80, 100])
def test_cost_keeps_every_figure_whole(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    report = {
        "currency": "EUR",
        "rows": [
            _cost_row(LONG_VM, int(130.9 * MIB), int(1.5 * 2**40)),
            _cost_row("web01", int(40.7 * MIB), int(22.5 * MIB)),
        ],
        "totals": {"total": "2489.12"},
    }
    text = _printed(monkeypatch, width, render_planning.print_cost, report, False)
    for figure in ("130.9 MiB", "1.5 TiB", "40.7 MiB", "22.5 MiB", "1234.56", "1244.56"):
        assert figure in text, figure
    for header in ("protected", "instances", "instance", "storage"):
        assert header in text
    assert "total: 2489.12 EUR" in text
