"""Writing the inventory: the one place vmvault writes inventory TOML.

Changes to the user's file keep its comments and layout (tomlkit) and replace it atomically;
new entries (a restored VM, discovered domains) are written by ``vm_entry``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Array, InlineTable, Table

from vmvault.inventory.load import parse_inventory
from vmvault.inventory.model import Inventory, InventoryError


def write_starts(
    path: str | os.PathLike[str],
    starts: Mapping[str, str | None],
    *,
    expected: Inventory | None = None,
) -> Inventory:
    """Set each named VM's own ``start`` (None removes it) in the inventory file and return the
    inventory it now holds.

    Only those keys change: comments, order and layout stay as written (tomlkit), a new
    ``start`` goes right after the VM's ``policy``. The new text must load before it replaces
    the file, and it replaces it atomically (temporary file, fsync, rename, directory fsync),
    keeping its mode, so a reader sees the old inventory or the new one, never a mix.
    ``expected`` is the inventory the caller planned from: if the file no longer holds it
    (comments aside), nothing is written.
    """
    p = Path(path).resolve()  # a symlinked inventory stays a symlink
    text = p.read_text()
    if expected is not None and parse_inventory(text, expected.source) != expected:
        raise InventoryError(f"{p} changed since it was read; plan again")
    doc = tomlkit.parse(text)
    vms = doc.get("vms")
    tables: dict[str, Table | InlineTable] = {}
    if isinstance(vms, AoT | Array):
        for item in vms:
            if isinstance(item, Table | InlineTable):
                tables[str(item.get("name"))] = item
    unknown = sorted(set(starts) - set(tables))
    if unknown:
        raise InventoryError(f"no VM named {', '.join(map(repr, unknown))} in {p}")
    for name, start in starts.items():
        table = tables[name]
        if start is None:
            table.pop("start", None)
        elif "start" in table or "policy" not in table:
            table["start"] = start
        else:
            # Beside the policy it delays, not after the VM's last key (often a comment that
            # introduces its disks). tomlkit has no public "insert after".
            table.value._insert_after("policy", "start", start)
    return write_inventory(p, tomlkit.dumps(doc))


def write_inventory(path: str | os.PathLike[str], text: str) -> Inventory:
    """Replace the inventory file with ``text`` once it loads (else raise naming the field):
    atomically, keeping the file's mode, so a reader sees the old one or the new one."""
    p = Path(path).resolve()
    inventory = parse_inventory(text, str(p))
    _replace(p, text)
    return inventory


def _replace(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), stat.S_IMODE(path.stat().st_mode))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def vm_entry(
    entry: Mapping[str, Any],
    *,
    comments: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> list[str]:
    """One ``[[vms]]`` entry as TOML lines, ready to paste into an inventory: ``name`` first,
    then its other keys in order (None and empty tables left out: ``tags = {  }`` says
    nothing), then each ``[[vms.disks]]``. ``comments`` go after a key's line (lined up),
    ``notes`` as comment lines at the end."""
    comments = comments or {}

    def line(key: str, value: Any, indent: str = "") -> str:
        text = f"{indent}{key} = {toml_value(value)}"
        return f"{text:<30}# {comment_text(comments[key])}" if key in comments else text

    def shown(table: Mapping[str, Any]) -> list[tuple[str, Any]]:
        keys = sorted(table, key=lambda k: k != "name")  # stable: the rest keep their order
        return [(k, table[k]) for k in keys if table[k] is not None and table[k] != {}]

    lines = ["[[vms]]"]
    lines += [line(k, v) for k, v in shown(entry) if k != "disks"]
    for disk in entry.get("disks", []):
        lines += ["", "  [[vms.disks]]"]
        lines += [line(k, v, "  ") for k, v in shown(disk)]
    lines += [f"  # not included: {comment_text(note)}" for note in notes]
    return lines


def toml_value(value: Any) -> str:
    """A value as TOML: strings as basic strings (quotes, backslashes and control characters
    escaped), lists as arrays, dicts as inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(x) for x in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in value.items()) + " }"
    out = []
    for char in str(value):
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def comment_text(text: str) -> str:
    """Text safe inside a TOML comment: one line, no control characters."""
    return "".join(c if c.isprintable() else " " for c in text)
