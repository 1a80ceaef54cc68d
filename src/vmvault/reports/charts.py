"""The reports page's charts as SVG (matplotlib), drawn from ``summary.summary``'s figures."""

from __future__ import annotations

import io
import json
import logging
from functools import lru_cache
from typing import Any

MiB = 1 << 20
CHARTS = ("usage", "vms")


def _svg(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    out = io.BytesIO()
    fig.tight_layout()
    fig.savefig(out, format="svg")
    plt.close(fig)
    return out.getvalue()


def render_chart(name: str, figures: dict[str, Any]) -> bytes:
    """``usage``: what each of the last 30 days' backups added, and the vault's usage by its
    points; ``vms``: per VM, mean backup duration, throughput, success rate, change rate.
    Drawing takes most of a second: a chart is drawn again only when its figures change."""
    shown = figures["per_day"] if name == "usage" else figures["per_vm"]
    return _drawn(name, json.dumps(shown, sort_keys=True))


@lru_cache(maxsize=8)
def _drawn(name: str, shown: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    # Its INFO lines (font cache, categorical units) are not the server's news: a few of
    # them on every visit of the reports page.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    # Bars at positions 0..n-1 with the names as tick labels: given strings as x values,
    # matplotlib logs "Using categorical units..." for every series.
    if name == "usage":
        days = json.loads(shown)
        labels = [d["day"][5:] for d in days]
        at = range(len(labels))
        fig, ax = plt.subplots(figsize=(10, 3.2))
        ax.bar(at, [d["stored"] / MiB for d in days], label="added that day")
        ax.set_xticks(at, labels)
        ax.set_ylabel("MiB added")
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        total = ax.twinx()
        total.plot(at, [d["total"] / MiB for d in days], color="C1", label="vault usage")
        total.set_ylabel("MiB stored")
        total.set_ylim(bottom=0)
        ax.set_title("Stored bytes per day (UTC)")
        ax.legend(
            [*ax.get_legend_handles_labels()[0], *total.get_legend_handles_labels()[0]],
            ["added that day", "vault usage"],
            loc="upper left",
            fontsize=8,
        )
        return _svg(fig)
    vms = json.loads(shown)
    names = list(vms)
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.2), squeeze=False)
    panels = [
        ("mean duration (s)", "duration", 1.0),
        ("throughput (MiB/s)", "throughput", 1 / MiB),
        ("success rate (%)", "success_rate", 100.0),
        ("change rate (%)", "change_rate", 100.0),
    ]
    for ax, (title, key, scale) in zip(axes[0], panels, strict=True):
        ax.bar(range(len(names)), [(vms[n][key] or 0) * scale for n in names])
        ax.set_xticks(range(len(names)), names)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _svg(fig)
