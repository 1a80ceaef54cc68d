"""Reading the inventory: TOML text to a validated ``Inventory``, errors naming the file
and the field at fault."""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vmvault.inventory.model import DEFAULT_INVENTORY, Inventory, InventoryError


def _where(loc: tuple[int | str, ...], doc: dict[str, Any]) -> str:
    """A pydantic error location as a readable path, naming VMs by name, not index."""
    parts: list[str] = []
    node: Any = doc
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            node = node[item]
            label = node.get("name") if isinstance(node, dict) else None
            suffix = f"[{label!r}]" if label else f"[{item}]"
            if parts:
                parts[-1] += suffix
            else:
                parts.append(suffix)
            continue
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


# A new VM's name becomes a folder and file names (restores as a new VM): no separators.
NEW_VM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def check_new_vm_name(name: str) -> str:
    """``name`` if it may name a new VM (and its files), else one clear error."""
    if not re.fullmatch(NEW_VM_NAME_PATTERN, name):
        raise InventoryError(
            f"{name!r} cannot name a VM: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_inventory(text: str, source: str) -> Inventory:
    try:
        doc = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, and an integer of more than 4300 digits
        raise InventoryError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise InventoryError(f"{source}: not valid TOML: nested too deeply") from None
    try:
        return Inventory.model_validate({**doc, "source": source})
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        where = _where(tuple(first["loc"]), doc)
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InventoryError(f"{source}: {where}: {message}{more}") from None


def load_inventory(path: str | os.PathLike[str] | None = None) -> Inventory:
    p = Path(path or os.environ.get("VMVAULT_INVENTORY") or DEFAULT_INVENTORY)
    try:
        text = _read_regular_file(p).decode()
    except FileNotFoundError:
        raise InventoryError(f"inventory {p} does not exist (use --inventory FILE)") from None
    except OSError as exc:
        raise InventoryError(f"inventory {p} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InventoryError(
            f"inventory {p} is not UTF-8 text (byte {exc.start} cannot be decoded)"
        ) from None
    return parse_inventory(text, str(p))


def _read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file; a FIFO, device or directory is refused at once (opened
    non-blocking and checked on the descriptor, so a FIFO swapped in cannot hang a daemon)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read()


class InventoryFile:
    """An inventory file read again when it changes (by its modification time), for the
    long-running processes: calling it gives the inventory it holds now. A broken new
    version raises (naming the field) and the old one stays the one in use."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._inventory: Inventory | None = None
        self._mtime = -1.0

    def __call__(self) -> Inventory:
        with self._lock:
            if self.path is None:
                if self._inventory is None:
                    self._inventory = Inventory(source="(no inventory)")
                return self._inventory
            try:
                mtime = os.stat(self.path).st_mtime
            except OSError:
                mtime = -1.0  # gone or unreadable: load_inventory names what is wrong
            if self._inventory is None or mtime != self._mtime or mtime < 0:
                self._inventory = load_inventory(self.path)
                self._mtime = mtime
            return self._inventory

    def replaced(self, inventory: Inventory) -> None:
        """The file was just replaced with ``inventory``: use it from now on."""
        assert self.path is not None
        with self._lock:
            self._inventory, self._mtime = inventory, os.stat(self.path).st_mtime
