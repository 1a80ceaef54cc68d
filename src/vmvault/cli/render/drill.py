"""Human output of a restore drill (`vm drill`, and `vm backup` of a VM with a drill)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmvault.cli.output import console


def print_drill(drill: Mapping[str, Any]) -> None:
    verdict = "[green]boot-verified[/]" if drill["result"] == "boot-verified" else "[red]FAILED[/]"
    console.print(
        f"restore drill of point {drill['point']}: {verdict} in {drill['seconds']:.1f} s "
        f"({drill['message']})",
        highlight=False,
        soft_wrap=True,
    )
