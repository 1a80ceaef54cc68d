"""A point's disk as a read-only, seekable binary file: what the file-system parsers read.

Every read goes through ``PointReader`` (export/reader.py): 4 MiB blocks fetched from the
vault, authenticated and cached, so the parsers' many small reads cost one fetch per block
and only the blocks that hold what is asked for are ever read.
"""

from __future__ import annotations

import io
import os

from vmvault.export.reader import PointReader


class DiskFile(io.RawIOBase):
    """Bytes ``0`` to ``reader.size`` of a point's disk; reads past the end return less."""

    def __init__(self, reader: PointReader) -> None:
        super().__init__()
        self.reader = reader
        self.size = reader.size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        length = max(0, min(len(view), self.size - self._pos))
        if length:
            self.reader.read_into(view[:length], self._pos)
            self._pos += length
        return length
