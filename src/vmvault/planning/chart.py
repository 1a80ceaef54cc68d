"""The planner's chart: each storage pool's backup load over the simulated day (PNG/SVG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmvault.units import human_mb_rate, mib_per_s


def render_load_chart(plan: dict[str, Any], path: str | Path, egress: dict[str, float]) -> Path:
    """Draw ``plan["pools"]`` (MB/s per simulation step, drawn as MiB/s like every rate
    vmvault shows) against each pool's egress budget, and with a stagger proposal the
    staggered load too."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    target = Path(path)
    pools = plan["pools"]
    fig, axes = plt.subplots(
        max(len(pools), 1), 1, figsize=(10, 2.4 * max(len(pools), 1)), squeeze=False
    )
    step_h = plan.get("step_s", 60) / 3600
    staggered = (plan.get("stagger") or {}).get("load_after_mb_s", {})
    for ax, (pool, load) in zip(axes[:, 0], sorted(pools.items()), strict=False):
        values = [mib_per_s(x) for x in load["load_mb_s"]]
        hours = [i * step_h for i in range(len(values))]
        ax.fill_between(hours, values, step="post", alpha=0.6, label="backup load")
        # The outline keeps a short burst (a few minutes of a 24 h axis) visible as a line.
        ax.step(hours, values, where="post", color="C0", linewidth=1.2)
        title = f"pool {pool}: peak {human_mb_rate(load['peak_mb_s'])}"
        if pool in staggered:
            # back to idle once the last job is done
            after = [*(mib_per_s(x) for x in staggered[pool]), 0.0]
            after_hours = [i * step_h for i in range(len(after))]
            hours += after_hours[len(hours) :]
            ax.step(after_hours, after, where="post", color="green", label="staggered")
            title += f", staggered {max(after):.1f} MiB/s"
        if pool in egress:
            budget = mib_per_s(egress[pool])
            ax.axhline(budget, color="red", linestyle="--", label="egress budget")
        ax.set_xlim(0, max(24.0, hours[-1] if hours else 24.0))
        ax.set_ylabel("MiB/s")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left")
    axes[-1, 0].set_xlabel(f"hours from {plan['day']} 00:00 UTC")
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    return target
