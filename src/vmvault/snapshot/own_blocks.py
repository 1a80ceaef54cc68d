"""The bytes a file holds on its own: what removing it would give back to its file system.

A reflink clone shares its blocks with the file it was cloned from until one of them is
written: counting its allocated blocks (``st_blocks``) would report the whole disk again
for a snapshot that costs almost nothing. Linux's FIEMAP ioctl lists a file's extents and
flags those shared with another file (``FIEMAP_EXTENT_SHARED``, set by XFS and btrfs);
only the others are counted. Where FIEMAP is not supported (tmpfs), no block can be shared:
the allocated blocks are the answer.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

FS_IOC_FIEMAP = 0xC020660B  # linux/fs.h: _IOWR('f', 11, struct fiemap)
_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents,
# fm_extent_count, fm_reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # fe_logical, fe_physical, fe_length, 2 reserved,
# fe_flags, 3 reserved
FIEMAP_MAX_OFFSET = 2**64 - 1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
EXTENTS_PER_CALL = 512  # a page of extents per ioctl: 28 KiB of buffer

_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL)


def own_bytes(path: str | Path) -> int:
    """Bytes of ``path``'s extents that no other file shares (its allocated bytes where
    the file system cannot tell)."""
    with open(path, "rb") as f:
        try:
            return _unshared_extent_bytes(f.fileno())
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            return os.fstat(f.fileno()).st_blocks * 512


def _unshared_extent_bytes(fd: int) -> int:
    total = 0
    start = 0
    while True:
        request = bytearray(_HEADER.size + EXTENTS_PER_CALL * _EXTENT.size)
        _HEADER.pack_into(request, 0, start, FIEMAP_MAX_OFFSET - start, 0, 0, EXTENTS_PER_CALL, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, request)  # fills the buffer in place
        mapped = _HEADER.unpack_from(request, 0)[3]
        if mapped == 0:
            return total
        for i in range(mapped):
            logical, _, length, _, _, flags, _, _, _ = _EXTENT.unpack_from(
                request, _HEADER.size + i * _EXTENT.size
            )
            if not flags & FIEMAP_EXTENT_SHARED:
                total += length
            if flags & FIEMAP_EXTENT_LAST:
                return total
            start = logical + length  # the next page starts after the last extent seen
