"""Where a restore writes: a new file put in place only when it is whole, or a block device.

A file is restored under a temporary name beside its final one, created with ``O_EXCL`` and
``O_NOFOLLOW`` in its directory opened once (writers reach it through that descriptor, as
``/proc/<pid>/fd/N/name``, so a directory swapped for a symlink meanwhile changes nothing).
Only a complete restore is linked to its final name: ``link`` refuses a name that exists,
so nothing is overwritten unless asked (``force``, which renames over the old name: a
symlink there is replaced, never written through). Any failure removes the temporary file,
so a full or read-only file system leaves no partial restore behind. A block device (or a
symlink to one, like ``/dev/vg/lv``) is written in place: restoring onto it is the point.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmvault.errors import UsageError, VmvaultError


class TargetExists(UsageError):
    code = "target_exists"
    http_status = 409


class TargetError(VmvaultError):
    """The restore target cannot be written: a full or read-only file system, permissions."""

    code = "target_error"


def target_failure(path: str | os.PathLike[str], exc: OSError) -> TargetError:
    """An OS error met while writing ``path`` as one clear line."""
    why = {
        errno.ENOSPC: "no space left on its file system",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EROFS: "its file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return TargetError(
        f"cannot write the restore to {os.fspath(path)}: {why}; nothing was left behind"
    )


@dataclass
class PreparedTarget:
    """``path`` is what writers open: the device itself, or the temporary file."""

    path: str
    final: Path
    is_device: bool
    abandoned: bool = False

    def abandon(self) -> None:
        """Do not put this restore in place (the caller restores another way)."""
        self.abandoned = True


@contextmanager
def restore_target(final: Path, *, force: bool = False) -> Iterator[PreparedTarget]:
    try:
        st = os.stat(final)  # follows a symlink: /dev/vg/lv names a device through one
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise target_failure(final, exc) from None
    if st is not None and stat.S_ISBLK(st.st_mode):
        yield PreparedTarget(str(final), final, is_device=True)
        return
    if st is not None:
        if not force:
            raise TargetExists(f"{final} exists: give --force to replace it")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"restore target {final} is neither a file nor a block device")
    try:
        folder = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"directory {final.parent} does not exist") from None
    except NotADirectoryError:
        raise UsageError(f"{final.parent} is not a directory") from None
    except OSError as exc:
        raise target_failure(final, exc) from None
    temporary = f".{final.name}.vmvault-{secrets.token_hex(6)}"
    try:
        try:
            fd = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=folder,
            )
        except OSError as exc:
            raise target_failure(final, exc) from None
        os.close(fd)
        # /proc/<pid>, not /proc/self: QEMU's tools open it too, from their own processes.
        through_fd = f"/proc/{os.getpid()}/fd/{folder}/{temporary}"
        target = PreparedTarget(through_fd, final, is_device=False)
        try:
            yield target
            if not target.abandoned:
                _put_in_place(folder, temporary, final, force=force)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=folder)
    finally:
        os.close(folder)


def _put_in_place(folder: int, temporary: str, final: Path, *, force: bool) -> None:
    try:
        if force:
            os.replace(temporary, final.name, src_dir_fd=folder, dst_dir_fd=folder)
        else:
            os.link(
                temporary, final.name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False
            )
    except FileExistsError:
        raise TargetExists(
            f"{final} appeared during the restore: give --force to replace it"
        ) from None
    except OSError as exc:
        raise target_failure(final, exc) from None


@contextmanager
def new_files_folder(directory: Path, *, confine_to: Path | None = None) -> Iterator[Path]:
    """The folder a restore puts new files in, as a path through its open descriptor.

    Without ``confine_to`` (the CLI's ``--to DIR``) the folder is made if missing. With it
    (the server's restore root), ``directory`` must be a new folder directly inside the
    root: it is made here, under the root's descriptor, and opened without following a
    symlink, so nothing planted in the root after the request was accepted can send the
    restore elsewhere.
    """
    if confine_to is None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise target_failure(directory, exc) from None
    else:
        root = confine_to.resolve()
        if directory.parent != root or directory.name in ("", ".", ".."):
            raise UsageError(f"{directory} is not a folder directly inside {root}")
        try:
            parent = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise target_failure(root, exc) from None
        try:
            os.mkdir(directory.name, 0o700, dir_fd=parent)
            folder = os.open(
                directory.name,
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=parent,
            )
        except FileExistsError:
            raise TargetExists(f"{directory} exists already: choose another name") from None
        except OSError as exc:
            raise target_failure(directory, exc) from None
        finally:
            os.close(parent)
    try:
        yield Path(f"/proc/{os.getpid()}/fd/{folder}")
    finally:
        os.close(folder)
