"""Writing a large object to a local file around the page cache (O_DIRECT).

A pack is fsynced before anything refers to it, so a buffered write pays twice: the copy
into the page cache (under 1 GB/s per core on a VM) and the write-back. With O_DIRECT the
device reads the bytes straight from one aligned buffer: measured on this project's build
machine, 16 MiB packs written and fsynced took a tenth of the CPU and less wall time. It
also keeps a backup from evicting the guests' cached pages on a hypervisor. The parts are
gathered into a page-aligned buffer (one memcpy), written padded to the block size, and
the file is cut back to its length before the fsync.

Not every file system takes O_DIRECT (ramfs answers EINVAL, tmpfs did before Linux 6.6):
the caller then writes through the page cache as before. ``VMVAULT_DIRECT_IO=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Sequence

# The largest logical block size of devices in use (4Kn disks); O_DIRECT needs offsets,
# lengths and memory aligned to it. mmap's pages are aligned to at least this.
ALIGN = 4096
# Below this a direct write saves too little to be worth its fixed cost.
DIRECT_MIN = 1 << 20

_buffers = threading.local()


def enabled() -> bool:
    return os.environ.get("VMVAULT_DIRECT_IO", "1") != "0" and hasattr(os, "O_DIRECT")


def _aligned_buffer(size: int) -> mmap.mmap:
    """This thread's aligned buffer, at least ``size`` bytes (kept for the next pack)."""
    buffer: mmap.mmap | None = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        if buffer is not None:
            buffer.close()
        buffer = mmap.mmap(-1, size)
        _buffers.buffer = buffer
    return buffer


def gather_aligned(parts: Sequence[bytes | bytearray | memoryview], size: int) -> memoryview:
    """``parts`` copied one after the other into this thread's aligned buffer, zero-padded
    to ``size`` bytes: what an O_DIRECT write can take. Valid until the thread's next call;
    release the view before that."""
    view = memoryview(_aligned_buffer(size))[:size]
    at = 0
    for part in parts:
        view[at : at + len(part)] = part
        at += len(part)
    view[at:size] = bytes(size - at)
    return view


class DirectUnsupported(Exception):
    """This file system refuses O_DIRECT: write through the page cache instead."""


def write_direct(
    path: str | os.PathLike[str], parts: Sequence[bytes | bytearray | memoryview]
) -> None:
    """Create ``path`` (which must not exist) holding ``parts``, written with O_DIRECT and
    fsynced. Raises DirectUnsupported, with nothing left behind, if the file system
    refuses O_DIRECT; any other OSError as the write raised it (the caller removes the file).
    """
    length = sum(len(p) for p in parts)
    padded = -(-length // ALIGN) * ALIGN
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            # Linux creates the file before it refuses the flag (seen on ramfs); the name
            # is ours alone (O_EXCL, a random temporary name), so it goes.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise DirectUnsupported(str(exc)) from None
        raise
    try:
        view = gather_aligned(parts, padded)
        try:
            written = 0
            while written < padded:
                written += os.write(fd, view[written:padded])
        except OSError as exc:
            if exc.errno != errno.EINVAL or written:
                raise
            os.close(fd)
            fd = -1
            os.unlink(path)
            raise DirectUnsupported(str(exc)) from None
        finally:
            view.release()
        os.ftruncate(fd, length)  # the padding goes; the data blocks are on the device
        os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)
