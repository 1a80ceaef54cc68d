"""Human output of `vmvault files`: volumes, directory listings, what a copy did."""

from __future__ import annotations

import stat
import time
from collections.abc import Mapping
from typing import Any

from vmvault.cli.output import console, human_bytes

KIND_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-" * 16
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


def _owner(value: int | None) -> str:
    return "-" if value is None else str(value)


def print_listing(doc: Mapping[str, Any]) -> None:
    where = f"disk {doc['disk']} of point {doc['point']}"
    if "volumes" in doc:
        volumes = doc["volumes"]
        if not volumes:
            console.print(
                f"{where}: no partition table or file system vmvault reads", soft_wrap=True
            )
            return
        console.print(
            f"{where}: {len(volumes)} volume{'s' if len(volumes) != 1 else ''}", soft_wrap=True
        )
        for v in volumes:
            label = f"  label {v['label']!r}" if v["label"] else ""
            console.print(
                f"  {v['name']:<16} {v['fs_type']:<8} {human_bytes(v['size']):>10}{label}",
                highlight=False,
                soft_wrap=True,
            )
        return
    console.print(f"{doc['path']} in {where}", highlight=False, soft_wrap=True)
    for e in doc["entries"]:
        mode = stat.filemode(KIND_BITS.get(e["kind"], 0) | int(e["mode"], 8))
        if e["kind"] not in KIND_BITS:
            mode = "?" + mode[1:]
        name = e["name"] + ("/" if e["kind"] == "dir" else "")
        if e["target"] is not None:
            name += f" -> {e['target']}"
        console.print(
            f"  {mode} {_owner(e['uid']):>6} {_owner(e['gid']):>6} "
            f"{human_bytes(e['size']):>10}  {_when(e['mtime'])}  {name}",
            highlight=False,
            soft_wrap=True,
        )


def print_copied(doc: Mapping[str, Any]) -> None:
    parts = [f"{doc['files']} file{'s' if doc['files'] != 1 else ''}"]
    if doc["directories"]:
        parts.append(f"{doc['directories']} director{'ies' if doc['directories'] != 1 else 'y'}")
    if doc["symlinks"]:
        parts.append(f"{doc['symlinks']} symlink{'s' if doc['symlinks'] != 1 else ''}")
    console.print(
        f"copied {', '.join(parts)} ({human_bytes(doc['bytes_written'])}) from disk "
        f"{doc['disk']} of point {doc['point']} to {doc['to']} in {doc['seconds']:.1f} s; "
        f"read {doc['blocks_read']} of the disk's {doc['disk_blocks']} blocks",
        highlight=False,
        soft_wrap=True,
    )
    for s in doc["skipped"]:
        console.print(f"  skipped {s['path']}: {s['reason']}", highlight=False, soft_wrap=True)
    for f in doc["failed"]:
        console.print(f"  NOT copied {f['path']}: {f['reason']}", highlight=False, soft_wrap=True)
