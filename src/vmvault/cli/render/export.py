"""Human output of `vmvault export`: the export started, the running ones, those stopped."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from vmvault.cli.output import console, human_bytes


def _until(expires: str | None) -> str:
    if expires is None:
        return "(starting)"
    seconds = max(0, int((datetime.fromisoformat(expires) - datetime.now(UTC)).total_seconds()))
    if seconds < 60:
        left = f"{seconds} s"
    elif seconds < 3600:
        left = f"{seconds // 60} min"
    else:
        left = f"{seconds // 3600} h {seconds // 60 % 60:02d} min"
    return f"{expires.replace('+00:00', 'Z')} (in {left})"


def _lifetime(doc: Mapping[str, Any]) -> str:
    if owner := doc.get("owner"):
        return f"while {owner} runs"
    return f"until {_until(doc['expires'])}"


def print_export(doc: Mapping[str, Any]) -> None:
    """The URI alone on its first line (for scripts), then what is served until when."""
    console.print(doc["uri"], highlight=False, soft_wrap=True)
    mode = "writable (writes stay in a local overlay)" if doc["writable"] else "read-only"
    console.print(
        f"export {doc['id']}: disk {doc['disk']} of {doc['vm']}'s point {doc['point']}, "
        f"{human_bytes(doc['size'])}, {mode}, {_lifetime(doc)}",
        highlight=False,
        soft_wrap=True,
    )


def print_exports(doc: Mapping[str, Any]) -> None:
    """Each running export on two lines: what it serves, then its URI whole (a table would
    wrap it, and it is what one copies)."""
    exports = doc["exports"]
    if not exports:
        console.print("no exports running")
        return
    for e in exports:
        mode = "writable" if e["writable"] else "read-only"
        console.print(
            f"{e['id']}  {e['vm']}/{e['disk']} of point {e['point']}, {mode}, "
            f"{_lifetime(e)}, pid {e['pid']}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"          {e['uri']}", highlight=False, soft_wrap=True)


def print_stopped(doc: Mapping[str, Any]) -> None:
    if not doc["stopped"]:
        console.print("no export was running")
    for export_id in doc["stopped"]:
        console.print(f"stopped export {export_id}", soft_wrap=True)
