"""A backup's summary at the width of a plain terminal: every figure printed whole."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from vmvault.cli.render import points as render_points

GIB = 1024**3


def _point(disks: list[str]) -> dict[str, Any]:
    stats = {
        "read": 155 * 1024**2 + 123_456,
        "changed": 129 * 1024**2 + 654_321,
        "new": 129 * 1024**2 + 654_321,
        "stored": 80 * 1024**2 + 400_000,
        "seconds": 1.5,
    }
    return {
        "id": "20261129T185358.798551Z-41775c0a",
        "type": "incremental",
        "vm": "web01",
        "disks": [{"name": name, "size": 256 * GIB, "stats": stats} for name in disks],
        "consistency": {"level": "crash", "reason": "disk images read as they are"},
    }


@pytest.mark.parametrize("width", [80, 100])
def test_a_backup_summary_fits_80_columns_with_no_figure_cut(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(render_points, "console", console)
    render_points.print_point(_point(["web01", "data"]))
    text = console.export_text()
    assert "…" not in text
    for figure in ("256.0 GiB", "155.1 MiB", "129.6 MiB", "80.4 MiB", "1.50 s", "103.4 MiB/s"):
        assert figure in text, figure
    assert "web01" in text and "data" in text
