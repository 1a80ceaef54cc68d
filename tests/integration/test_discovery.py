"""Discovering libvirt domains with the real virsh, through libvirt's test driver.

The test driver needs no daemon: ``virsh -c test:///PATH`` reads a node XML file of
domains (a fresh copy at every virsh call), and ``test:///default`` is libvirt's built-in
one-domain node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from support.cli import run_cli
from vmvault.inventory import Vm, parse_inventory
from vmvault.inventory.discovery import discover, domain_entry

assert shutil.which("virsh"), "virsh not found: install libvirt-clients (make sysdeps)"

ODD_PATH = '/var/lib/images/db "01" \\ ü.qcow2'
NODE_XML = """<node>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>web01</name>
    <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/var/lib/libvirt/images/web01.qcow2'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='block' device='disk'>
        <driver name='qemu' type='raw'/>
        <source dev='/dev/vg0/web01-data'/>
        <target dev='vdb' bus='virtio'/>
      </disk>
      <disk type='file' device='cdrom'>
        <source file='/iso/debian.iso'/>
        <target dev='sda' bus='sata'/>
        <readonly/>
      </disk>
      <disk type='network' device='disk'>
        <driver name='qemu' type='raw'/>
        <source protocol='rbd' name='rbd/web01-logs'/>
        <target dev='vdc' bus='virtio'/>
      </disk>
      <disk type='volume' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source pool='default' volume='web01-cache.qcow2'/>
        <target dev='vdd' bus='virtio'/>
      </disk>
    </devices>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>db01</name>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='raw'/>
        <source file='/var/lib/images/db01-os.img'/>
        <target dev='sda' bus='scsi'/>
      </disk>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/var/lib/images/db &quot;01&quot; \\ ü.qcow2'/>
        <target dev='sdb' bus='scsi'/>
      </disk>
    </devices>
    <test:runstate>5</test:runstate>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>app02</name>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='vmdk'/>
        <source file='/images/app02-old.vmdk'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='file' device='disk'>
        <driver name='qemu' type='raw'/>
        <source file='/images/app02-data.img'/>
        <target dev='vdb' bus='virtio'/>
      </disk>
      <disk type='file' device='disk'>
        <driver name='qemu' type='vpc'/>
        <source file='/images/app02-os.vhd'/>
        <target dev='vdc' bus='virtio'/>
        <boot order='1'/>
      </disk>
    </devices>
    <test:runstate>3</test:runstate>
  </domain>
  <domain type='test'>
    <name>net01</name>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='network' device='disk'>
        <driver name='qemu' type='raw'/>
        <source protocol='iscsi' name='iqn.2026-01.example:net01/0'>
          <host name='192.0.2.7' port='3260'/>
        </source>
        <target dev='sda' bus='scsi'/>
      </disk>
    </devices>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>my vm</name>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/images/my-vm.img'/>
        <target dev='vda' bus='virtio'/>
      </disk>
    </devices>
    <test:runstate>5</test:runstate>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>1</name>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/images/one.img'/>
        <target dev='vda' bus='virtio'/>
      </disk>
    </devices>
    <test:runstate>5</test:runstate>
  </domain>
</node>
"""


@pytest.fixture
def node_uri(tmp_path: Path) -> str:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    return f"test://{node}"


def _disks(vm: Vm) -> list[tuple[str, str, str, str]]:
    return [(d.name, d.path, d.format.value, d.role.value) for d in vm.disks]


def test_domains_become_inventory_entries_that_load(node_uri: str) -> None:
    text = discover(node_uri).to_toml()
    inv = parse_inventory(text, "discovered.toml")
    assert [vm.name for vm in inv.vms] == ["app02", "db01", "web01"]
    app02, db01, web01 = inv.vms
    assert web01.state.value == "running" and web01.host == "localhost"
    assert _disks(web01) == [
        ("vda", "/var/lib/libvirt/images/web01.qcow2", "qcow2", "os"),
        ("vdb", "/dev/vg0/web01-data", "raw", "data"),
    ]
    assert db01.state.value == "stopped"
    assert _disks(db01) == [
        ("sda", "/var/lib/images/db01-os.img", "raw", "os"),
        ("sdb", ODD_PATH, "qcow2", "data"),
    ]
    assert app02.state.value == "running"  # paused: QEMU still holds the disks
    # The disk with boot order 1 is the OS disk, not the first one listed.
    assert _disks(app02) == [
        ("vdb", "/images/app02-data.img", "raw", "data"),
        ("vdc", "/images/app02-os.vhd", "vpc", "os"),
    ]

    # What was left out is said, in comments, next to where it belongs.
    assert 'state = "running"             # virsh domstate: paused' in text
    assert "# virsh domstate: shut off" in text
    assert "  # not included: vdc: network disk (rbd rbd/web01-logs) has no local path" in text
    assert (
        "  # not included: vdd: storage-pool volume web01-cache.qcow2 of pool default: add it"
        " by its path (virsh vol-path --pool default web01-cache.qcow2)"
    ) in text
    assert "  # not included: vda: format vmdk is not one vmvault reads" in text
    assert "/iso/debian.iso" not in text  # a CD-ROM holds no VM data
    assert "# not included: net01: no disk with a local path in a format vmvault reads" in text
    assert "# not included: my vm: not a valid inventory entry: name: String should match" in (text)
    # "1" is also web01's domain id, which virsh looks up first.
    assert "# not included: 1: virsh dumpxml '1' returned domain 'web01'" in text


def test_json_output(node_uri: str) -> None:
    done = run_cli("vm", "discover", "--connect", node_uri, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["uri"] == node_uri
    by_name = {vm["entry"]["name"]: vm for vm in doc["vms"]}
    assert list(by_name) == ["app02", "db01", "web01"]
    web01 = by_name["web01"]
    assert web01["uuid"] == "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"
    assert web01["domstate"] == "running"
    assert web01["entry"]["disks"][0] == {
        "name": "vda",
        "path": "/var/lib/libvirt/images/web01.qcow2",
        "format": "qcow2",
        "role": "os",
    }
    assert [note.split(":")[0] for note in web01["left_out"]] == ["vdc", "vdd"]
    assert by_name["db01"]["domstate"] == "shut off"
    assert by_name["db01"]["entry"]["state"] == "stopped"
    assert [note.split(":")[0] for note in doc["left_out"]] == ["1", "my vm", "net01"]


def test_libvirt_default_test_node_through_the_cli(tmp_path: Path) -> None:
    done = run_cli("vm", "discover", "-c", "test:///default")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# libvirt domains of test:///default, by vmvault vm discover.")
    inv = parse_inventory(done.stdout, "discovered.toml")
    (vm,) = inv.vms
    assert vm.name == "test" and vm.state.value == "running"
    # No driver type: libvirt opens it as raw.
    assert _disks(vm) == [("vda", "/guest/diskimage1", "raw", "os")]


def test_without_virsh_one_clear_error_line(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path)}  # a PATH without virsh
    done = run_cli("vm", "discover", env=env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "error: virsh not found: install libvirt-clients to discover libvirt domains\n"
    )
    as_json = run_cli("vm", "discover", "--json", env=env)
    assert json.loads(as_json.stdout)["error"]["code"] == "virsh_not_found"


def test_a_uri_virsh_cannot_open_gives_virshs_reason(tmp_path: Path) -> None:
    done = run_cli("vm", "discover", "--connect", f"test://{tmp_path}/absent.xml")
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: virsh list failed: failed to connect to the hypervisor")
    assert "absent.xml" in lines[0]


def test_a_remote_uris_host_becomes_the_entrys_host() -> None:
    xml_text = subprocess.run(
        ["virsh", "-c", "test:///default", "dumpxml", "test"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "host" not in domain_entry("test", xml_text, "running", None).entry
    assert "host" not in domain_entry("test", xml_text, "running", "localhost").entry
    found = domain_entry("test", xml_text, "shut off", "hv1")
    assert found.entry["host"] == "hv1" and found.entry["state"] == "stopped"
