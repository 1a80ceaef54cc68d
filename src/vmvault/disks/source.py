"""Reading a disk: its size, where its data is, and its bytes.

Holes are found with SEEK_DATA/SEEK_HOLE, so a sparse image's unallocated ranges are never
read (reading a hole still costs a page-cache fill of zeros). Block devices report all of
their range as data; all-zero blocks are then skipped after reading, by the pipeline.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vmvault.errors import DiskNotFound, UsageError


class DiskSource(Protocol):
    """What the backup pipeline needs from a disk."""

    path: str
    size: int

    def data_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        """Ranges [a, b) within [start, end) that may hold data; the rest reads as zeros."""

    def read_into(self, buffer: memoryview, offset: int) -> None:
        """Fill ``buffer`` with the bytes at ``offset`` (zeros beyond the end of the disk)."""

    def close(self) -> None: ...


@dataclass
class RawDisk:
    """A raw image file or a block device, opened read-only."""

    path: str
    size: int
    fd: int
    is_block_device: bool

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RawDisk:
        p = Path(path)
        try:
            # O_NONBLOCK: opening a FIFO (or a tty) must not wait for a writer; the type
            # is checked on what was opened, and only files and block devices are read.
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DiskNotFound(f"disk {p} does not exist") from None
        except IsADirectoryError:
            raise DiskNotFound(f"disk {p} is a directory, not a disk image") from None
        except PermissionError:
            raise DiskNotFound(f"disk {p} cannot be read (permission denied)") from None
        except OSError as exc:  # ENXIO: a socket, a device without a driver
            raise UsageError(f"disk {p} cannot be opened as a disk: {exc.strerror}") from None
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise DiskNotFound(f"disk {p} is a directory, not a disk image")
        is_block = stat.S_ISBLK(st.st_mode)
        if not (is_block or stat.S_ISREG(st.st_mode)):
            os.close(fd)
            kind = {
                stat.S_IFIFO: "a FIFO",
                stat.S_IFCHR: "a character device",
                stat.S_IFSOCK: "a socket",
            }.get(stat.S_IFMT(st.st_mode), "not a disk")
            raise UsageError(f"disk {p} is {kind}, neither a regular file nor a block device")
        os.set_blocking(fd, True)
        size = os.lseek(fd, 0, os.SEEK_END) if is_block else st.st_size
        return cls(str(p), size, fd, is_block)

    def data_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        end = min(end, self.size)
        if self.is_block_device or start >= end:
            return [(start, end)] if start < end else []
        ranges = []
        pos = start
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                if exc.errno == errno.EINVAL:  # file system without SEEK_DATA: all data
                    return [(pos, end)]
                raise
            if data >= end:
                break
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
            ranges.append((data, hole))
            pos = hole
        return ranges

    def read_into(self, buffer: memoryview, offset: int) -> None:
        want = min(len(buffer), max(self.size - offset, 0))
        done = 0
        while done < want:
            n = os.preadv(self.fd, [buffer[done:want]], offset + done)
            if n == 0:
                raise DiskNotFound(f"disk {self.path} shrank while it was being read")
            done += n
        if want < len(buffer):
            buffer[want:] = bytes(len(buffer) - want)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RawDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
