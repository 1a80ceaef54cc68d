"""Discovering libvirt domains through ``virsh``, as inventory entries for a person to review.

Only the ``virsh`` command (Debian's libvirt-clients) is needed, not the libvirt Python
binding, which would have to be built against the host's libvirt. Each domain's XML
(``virsh dumpxml``) gives its disks: the target name, the image path (a file or a block
device) and the format QEMU opens it with; ``virsh domstate`` gives whether it runs.
The roles are a guess (the boot disk, else the first disk, is the OS disk; the others are
data disks): nothing in libvirt says which disk is a temporary one.

Every entry is validated as the inventory would validate it, so what is printed loads;
a disk or a domain that cannot be backed up by path (network disks, storage-pool volumes,
formats vmvault does not read, names the inventory refuses) is left out with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from vmvault.errors import VmvaultError
from vmvault.inventory.model import DiskRole, Vm
from vmvault.inventory.write import comment_text, vm_entry

VIRSH_TIMEOUT = 60.0
# libvirt's driver type -> the inventory's format, for the formats vmvault reads.
FORMATS = {"raw": "raw", "qcow2": "qcow2", "vpc": "vpc"}
# Domain states in which the QEMU process holds the disks (virsh domstate's words).
STOPPED_STATES = {"shut off"}


class DiscoveryError(VmvaultError):
    code = "discovery_failed"


class VirshNotFound(DiscoveryError):
    code = "virsh_not_found"


@dataclass
class DiscoveredVm:
    """One domain as an inventory entry (``entry``) plus what libvirt said about it."""

    entry: dict[str, Any]
    uuid: str
    domstate: str
    left_out: list[str] = field(default_factory=list)  # disks not in the entry, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "uuid": self.uuid,
            "domstate": self.domstate,
            "left_out": self.left_out,
        }


@dataclass
class Discovery:
    uri: str | None
    vms: list[DiscoveredVm] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # domains not in the output, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "vms": [vm.to_dict() for vm in self.vms],
            "left_out": self.left_out,
        }

    def to_toml(self) -> str:
        """The entries as inventory TOML, with comments saying what to review."""
        uri = comment_text(self.uri or "virsh's default URI")
        lines = [
            f"# libvirt domains of {uri}, by vmvault vm discover.",
            "# Review before adding them to the inventory: disk roles are guesses (the boot",
            "# disk, else the first, is the OS disk; mark a temporary disk by hand), the state",
            "# is the domain's at discovery, and pools and policies are left unset.",
        ]
        for vm in self.vms:
            lines += [
                "",
                *vm_entry(
                    vm.entry,
                    comments={"state": f"virsh domstate: {vm.domstate}"},
                    notes=vm.left_out,
                ),
            ]
        if self.left_out:
            lines.append("")
            lines += [f"# not included: {comment_text(note)}" for note in self.left_out]
        return "\n".join(lines) + "\n"


def discover(uri: str | None = None) -> Discovery:
    """Read every domain of ``uri`` (virsh's default when None) as an inventory entry."""
    virsh = shutil.which("virsh")
    if virsh is None:
        raise VirshNotFound("virsh not found: install libvirt-clients to discover libvirt domains")
    base = [virsh, *(["--connect", uri] if uri else [])]
    # Sorted: virsh lists running domains by id first, which changes from day to day.
    names = sorted(n for n in _virsh(base, "list", "--all", "--name").splitlines() if n.strip())
    host = urlsplit(uri).hostname if uri else None
    found = Discovery(uri)
    for name in names:
        # --domain: a name that starts with "-" is not an option.
        try:
            xml_text = _virsh(base, "dumpxml", "--domain", name)
            domstate = _virsh(base, "domstate", "--domain", name).strip()
            found.vms.append(domain_entry(name, xml_text, domstate, host))
        except DiscoveryError as exc:
            # Undefined since `list`, or not representable: the other domains still count.
            found.left_out.append(f"{name}: {exc.message}")
    return found


def domain_entry(name: str, xml_text: str, domstate: str, host: str | None) -> DiscoveredVm:
    """An inventory entry from a domain's XML and state; `DiscoveryError` if none fits."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise DiscoveryError(f"virsh dumpxml gave XML that does not parse: {exc}") from None
    xml_name = root.findtext("name")
    if xml_name != name:
        # virsh looks a name up as an id or a UUID first: "3" may be another domain's id.
        raise DiscoveryError(f"virsh dumpxml {name!r} returned domain {xml_name!r}")
    disks, left_out = _disks(root)
    if not disks:
        raise DiscoveryError("no disk with a local path in a format vmvault reads")
    entry: dict[str, Any] = {"name": name}
    if host and host != "localhost":
        entry["host"] = host
    entry["state"] = "stopped" if domstate in STOPPED_STATES else "running"
    entry["disks"] = disks
    try:
        Vm.model_validate(entry)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DiscoveryError(f"not a valid inventory entry: {where}: {first['msg']}") from None
    return DiscoveredVm(entry, root.findtext("uuid") or "", domstate, left_out)


def _disks(root: ET.Element) -> tuple[list[dict[str, str]], list[str]]:
    """The domain's disks that vmvault can read by path, and notes on the others."""
    disks: list[dict[str, str]] = []
    boot_order: list[int] = []
    left_out: list[str] = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") not in ("disk", "lun"):
            continue  # CD-ROMs and floppies hold no VM data
        target_element = disk.find("target")
        target = (target_element.get("dev") if target_element is not None else None) or "disk"
        kind = disk.get("type", "file")
        source = disk.find("source")
        path = None
        if source is not None:
            path = source.get("file") if kind == "file" else source.get("dev")
        if kind == "volume" and source is not None:
            pool, volume = source.get("pool", "?"), source.get("volume", "?")
            left_out.append(
                f"{target}: storage-pool volume {volume} of pool {pool}: add it by its path"
                f" (virsh vol-path --pool {pool} {volume})"
            )
            continue
        if kind not in ("file", "block") or not path:
            where = (
                f" ({source.get('protocol')} {source.get('name', '?')})"
                if (source is not None and source.get("protocol"))
                else ""
            )
            left_out.append(f"{target}: {kind} disk{where} has no local path")
            continue
        driver = disk.find("driver")
        # libvirt opens a disk without a driver type as raw (it never probes formats).
        libvirt_format = (driver.get("type") if driver is not None else None) or "raw"
        if libvirt_format not in FORMATS:
            left_out.append(f"{target}: format {libvirt_format} is not one vmvault reads")
            continue
        boot = disk.find("boot")
        boot_order.append(int(boot.get("order", "0")) if boot is not None else 0)
        disks.append({"name": target, "path": path, "format": FORMATS[libvirt_format]})
    booted = [i for i, order in enumerate(boot_order) if order > 0]
    os_disk = min(booted, key=lambda i: boot_order[i]) if booted else 0
    for i, disk_doc in enumerate(disks):
        disk_doc["role"] = (DiskRole.OS if i == os_disk else DiskRole.DATA).value
    return disks, left_out


def _virsh(base: list[str], *args: str) -> str:
    """Run ``virsh ARGS``; its output, or `DiscoveryError` with virsh's own error lines."""
    try:
        done = subprocess.run(
            [*base, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=VIRSH_TIMEOUT,
            # virsh translates states ("shut off") and messages: read them in English.
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DiscoveryError(f"virsh {args[0]} did not finish in {VIRSH_TIMEOUT:g} s") from None
    except OSError as exc:
        raise DiscoveryError(f"cannot run virsh: {exc.strerror or exc}") from None
    if done.returncode != 0:
        errors = [
            line.removeprefix("error: ").strip()
            for line in done.stderr.splitlines()
            if line.startswith("error: ")
        ]
        detail = "; ".join(errors) or done.stderr.strip() or f"exit code {done.returncode}"
        raise DiscoveryError(f"virsh {args[0]} failed: {detail}")
    return done.stdout
