"""Files inside a point's disks: listed, and downloaded (a file as itself, a folder as tar).

Each call opens the point's disk under a read lock for as long as it runs (a download:
until its last byte is sent), reading only the vault blocks that hold what it shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from vmvault.app.files import list_files, open_point_disk
from vmvault.errors import UsageError
from vmvault.files.filesystems import DIRECTORY, FILE
from vmvault.files.tarstream import file_stream, tar_stream
from vmvault.server.api.schemas import Reader, State

router = APIRouter()
PathQuery = Annotated[str, Query(max_length=4096)]
DiskQuery = Annotated[str | None, Query(max_length=255)]


@router.get("/points/{point_id}/files", tags=["files"])
def list_point_files(
    point_id: str, state: State, _: Reader, path: PathQuery = "/", disk: DiskQuery = None
) -> dict[str, Any]:
    """At ``/`` the disk's volumes (partitions, LVM volumes), below them a directory's
    entries (or one file's): kind, size, mode, owner, times, symlink target."""
    point = state.point(point_id)
    return list_files(state.ctx, point["id"], path, disk=disk)


@router.get("/points/{point_id}/files/download", tags=["files"])
def download_point_files(
    point_id: str, state: State, _: Reader, path: PathQuery, disk: DiskQuery = None
) -> StreamingResponse:
    """A file's bytes, or a directory (or a whole volume) as a tar archive."""
    point = state.point(point_id)
    held = ExitStack()
    pd = held.enter_context(open_point_disk(state.ctx, point["id"], disk=disk))
    try:
        located = pd.browser.locate(path)
        if located.volume is None:
            raise UsageError("/ is the list of volumes: download a volume or a path in one")
        node = located.node or pd.browser.file_system(located.volume).root
        name = located.path.rsplit("/", 1)[-1]
        if node.entry.kind == FILE:
            body = file_stream(node, located.path)
            media, filename, length = "application/octet-stream", name, node.entry.size
        elif node.entry.kind == DIRECTORY:
            body = tar_stream(node, name, located.path)
            media, filename, length = "application/x-tar", f"{name}.tar", None
        else:
            raise UsageError(f"{located.path} is a {node.entry.kind}: only files and folders")
    except BaseException:
        held.close()
        raise

    def stream() -> Iterator[bytes]:
        # The disk stays open (and the vault locked against collection) until the last byte.
        try:
            yield from body
        finally:
            held.close()

    headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"}
    if length is not None:
        headers["Content-Length"] = str(length)
    return StreamingResponse(stream(), media_type=media, headers=headers)
