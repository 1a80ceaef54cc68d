"""Disk images in qcow2, VHD (``vpc``) and VHDX, seen as the guest sees them.

qemu-storage-daemon exports the image through FUSE as a plain file of the guest-visible
size. Reads of that file go through QEMU's block layer, and SEEK_DATA/SEEK_HOLE on it follow
QEMU's allocation map, so ``RawDisk`` reads only allocated clusters without knowing any
image format. The same export, writable, is how a restore fills a new image: zero chunks
are never written, so they stay unallocated and the image stays compact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmvault.errors import DiskNotFound, UsageError, VmvaultError

FORMATS = ("raw", "qcow2", "vpc", "vhdx")
_START_TIMEOUT = 30.0


class QemuError(VmvaultError):
    code = "qemu_failed"
    transient = True


class ProbeFailed(QemuError):
    """qemu-img could not make out an image's header: a damaged image, or a raw disk whose
    first bytes look like a header. Trying again changes neither."""

    code = "format_probe_failed"
    transient = False


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        package = "qemu-system-common" if tool == "qemu-storage-daemon" else "qemu-utils"
        raise QemuError(f"{tool} is not installed (apt-get install {package})")
    return found


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown disk format {fmt!r} (known: {', '.join(FORMATS)})")
    return fmt


@dataclass(frozen=True)
class ImageHeader:
    """What ``qemu-img info`` makes of an image when it is not told the format."""

    format: str  # "raw" when qemu-img recognises no header
    backing_file: str | None = None
    data_file: str | None = None  # a qcow2 image's external data file


def probe_image(image: str | os.PathLike[str]) -> ImageHeader:
    """The format ``image``'s header claims, probed by ``qemu-img info``.

    The header is whatever was written at the start of the file: for a raw disk that is the
    guest's own data. qemu-img info opens the image alone, never its backing file; ``-U``
    lets it read an image a running QEMU holds locked. The absolute path keeps a name with
    a colon from being taken for a protocol (``nbd:...``) or options (``json:...``)."""
    path = os.path.abspath(image)
    try:
        result = subprocess.run(
            [_need("qemu-img"), "info", "--output=json", "-U", path],
            capture_output=True,
            text=True,
            check=False,
            timeout=_START_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise QemuError(f"qemu-img info {path} gave no answer in {_START_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        # "qemu-img: Could not open '<path>': Unsupported cluster size: 2^0"
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        reason = lines[-1].removeprefix("qemu-img: ").removeprefix(f"Could not open '{path}': ")
        raise ProbeFailed(f"qemu-img cannot make out the format of {image}: {reason}")
    info = json.loads(result.stdout)
    specific = info.get("format-specific", {}).get("data", {})
    return ImageHeader(
        format=str(info["format"]),
        backing_file=info.get("backing-filename"),
        data_file=specific.get("data-file"),
    )


@contextmanager
def fuse_export(
    image: str | os.PathLike[str], fmt: str, *, writable: bool = False, backing: bool = True
) -> Iterator[str]:
    """Yield the path of a file showing ``image``'s guest-visible bytes while in the block.

    ``backing=False`` opens a qcow2 image without the backing file its header names (the
    unallocated clusters then read as zeros)."""
    check_format(fmt)
    source = Path(image)
    if not source.is_file():
        raise DiskNotFound(f"disk {source} does not exist")
    daemon = _need("qemu-storage-daemon")
    workdir = Path(tempfile.mkdtemp(prefix="vmvault-export-"))
    mountpoint = workdir / "disk"
    mountpoint.touch()
    ro, rw = ("off", "on") if writable else ("on", "off")
    image_node: dict[str, object] = {
        "driver": fmt,
        "node-name": "fmt",
        "file": "file",
        "read-only": not writable,
    }
    if fmt == "qcow2" and not backing:
        image_node["backing"] = None  # only the JSON form of --blockdev can say null
    argv = [
        daemon,
        "--blockdev",
        f"driver=file,node-name=file,filename={source.absolute()},read-only={ro}",
        "--blockdev",
        json.dumps(image_node),
        "--export",
        f"type=fuse,id=exp,node-name=fmt,mountpoint={mountpoint},writable={rw}",
    ]
    log = workdir / "daemon.log"  # a file, not a pipe: a chatty daemon never blocks
    with open(log, "w") as log_file:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        _wait_mounted(proc, mountpoint, log, source, fmt)
        yield str(mountpoint)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the daemon unmounts and flushes on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_mounted(
    proc: subprocess.Popen[bytes], mountpoint: Path, log: Path, source: Path, fmt: str
) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log.read_text(errors="replace").strip().splitlines()
            reason = err[-1] if err else f"exit code {proc.returncode}"
            raise QemuError(f"cannot open {source} as {fmt}: {reason}")
        if os.path.ismount(mountpoint):
            return
        time.sleep(0.02)
    raise QemuError(f"qemu-storage-daemon did not export {source} within {_START_TIMEOUT:.0f} s")


def create_image(
    path: str | os.PathLike[str],
    fmt: str,
    size: int,
    *,
    shown_as: str | os.PathLike[str] | None = None,
) -> None:
    """A new, empty image (reads as zeros) of the given format and guest size.

    ``shown_as`` is the name errors give the image: a restore creates it under a temporary
    name reached through a descriptor (``/proc/<pid>/fd/N/...``), which means nothing to
    the user.
    """
    check_format(fmt)
    result = subprocess.run(
        [_need("qemu-img"), "create", "-q", "-f", fmt, str(path), str(size)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        name = os.fspath(shown_as if shown_as is not None else path)
        # "qemu-img: <path>: Could not write qcow2 header: No space left on device"
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        reason = lines[-1].removeprefix("qemu-img: ").removeprefix(f"{os.fspath(path)}: ")
        reason = reason.replace(os.fspath(path), name)
        raise QemuError(f"cannot create the {fmt} image {name}: {reason}")
