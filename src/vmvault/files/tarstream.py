"""A file or directory of a point as a tar stream, produced as it is read (the
dashboard's folder downloads): headers from ``tarfile``, contents piece by piece, so a
large folder never sits in memory. Owners, modes, times and symlinks are in the headers;
device nodes and other special files are left out.

A file whose bytes the vault cannot give back ends the stream early (the client sees a
broken download, never a tar with silently zeroed contents); the error is logged with
the file's path.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator

from vmvault.errors import VmvaultError
from vmvault.files.extract import COPY_PIECE, safe_name
from vmvault.files.filesystems import DIRECTORY, FILE, SYMLINK, Node

log = logging.getLogger("vmvault")
TAR_BLOCK = tarfile.BLOCKSIZE


def tar_stream(node: Node, name: str, shown: str) -> Iterator[bytes]:
    """The tar of ``node`` under ``name``; ``shown`` is its path in messages."""
    yield from _members(node, name, shown)
    yield b"\0" * (2 * TAR_BLOCK)  # the end-of-archive marker


def _members(node: Node, name: str, shown: str) -> Iterator[bytes]:
    entry = node.entry
    info = tarfile.TarInfo(name)
    info.mode = entry.mode
    info.mtime = int(entry.mtime or 0)
    info.uid, info.gid = entry.uid or 0, entry.gid or 0
    if entry.kind == DIRECTORY:
        info.type = tarfile.DIRTYPE
        yield info.tobuf(tarfile.PAX_FORMAT)
        for child in node.children():
            if safe_name(child.entry.name):
                path = f"{shown.rstrip('/')}/{child.entry.name}"
                yield from _members(child, f"{name}/{child.entry.name}", path)
    elif entry.kind == SYMLINK and entry.target is not None:
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
        yield info.tobuf(tarfile.PAX_FORMAT)
    elif entry.kind == FILE:
        info.size = entry.size
        yield info.tobuf(tarfile.PAX_FORMAT)
        yield from _contents(node, shown)


def _contents(node: Node, shown: str) -> Iterator[bytes]:
    size = node.entry.size
    source = node.open()
    sent = 0
    try:
        while sent < size:
            piece = source.read(min(COPY_PIECE, size - sent))
            if not piece:
                break
            sent += len(piece)
            yield piece
    except VmvaultError as exc:
        log.error("download of %s stopped: %s", shown, exc.message)
        raise
    if sent < size:  # the file system said it was longer than its data: pad as tar must
        yield b"\0" * (size - sent)
    if size % TAR_BLOCK:
        yield b"\0" * (TAR_BLOCK - size % TAR_BLOCK)


def file_stream(node: Node, shown: str) -> Iterator[bytes]:
    """One file's bytes, piece by piece."""
    source = node.open()
    left = node.entry.size
    try:
        while left > 0:
            piece = source.read(min(COPY_PIECE, left))
            if not piece:
                break
            left -= len(piece)
            yield piece
    except VmvaultError as exc:
        log.error("download of %s stopped: %s", shown, exc.message)
        raise
