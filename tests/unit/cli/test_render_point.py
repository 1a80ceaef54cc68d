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
    assert "recovery point 20261129T185358.798551Z-41775c0a (incremental, web01)" in text


def _summary(point_id: str, vm: str, kind: str, verified: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": point_id,
        "vm": vm,
        "type": kind,
        "consistency": "application",
        "disks": ["os", "data"],
        "size": 256 * GIB,
        "changed": 3 * 1024**2,
        "stored": 1024**2 + 300_000,
        "last_verified": verified,
    }


@pytest.mark.parametrize("width", [80, 100, 140])
def test_list_rows_are_one_line_whatever_the_width(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(render_points, "console", console)
    ids = ["20261129T185358.798551Z-41775c0a", "20261129T185402.569016Z-2125588d"]
    ok = {"at": "2026-11-29T19:23:10Z", "ok": True}
    summaries = [
        _summary(ids[0], "web-frontend-01", "full", None),
        _summary(ids[1], "web-frontend-01", "incremental", ok),
    ]
    render_points.print_points(summaries, [], ids)
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.strip().startswith("2026")]
    assert len(rows) == 2 and "…" not in text  # one line each, nothing cut
    assert "20261129T185358 web-frontend-01" in rows[0]
    if width >= 140:  # the whole table
        assert "incremental application os, data 256.0 GiB" in rows[1]
        assert rows[1].rstrip().endswith("2026-11-29 19:23 ok")
    else:  # the compact one: no size or changed bytes, abbreviations
        assert "incr app os, data 1.3 MiB 11-29 19:23 ok" in " ".join(rows[1].split())
