"""Where a restore writes: a new file put in place only when it is whole, or a block device.

A file is restored under a temporary name beside its final one, created with ``O_EXCL`` and
``O_NOFOLLOW`` in its directory opened once (writers reach it through that descriptor, as
``/proc/<pid>/fd/N/name``, so a directory swapped for a symlink meanwhile changes nothing).
Only a complete restore is linked to its final name: ``link`` refuses a name that exists,
so nothing is overwritten unless asked (``force``, which renames over the old name: a
symlink there is replaced, never written through). Any failure removes the temporary file,
so a full or read-only file system leaves no partial restore behind. A block device (or a
symlink to one, like ``/dev/vg/lv``) is written in place: restoring onto it is the point,
unless vmvault chose the name itself (``new_file``).
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


# The folders ``new_files_folder`` holds open: the path through each one's descriptor
# (``/proc/<pid>/fd/N``) -> the folder the user named, for messages (see ``shown_path``).
_OPEN_FOLDERS: dict[str, Path] = {}


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a message names it: a file reached through a folder ``new_files_folder``
    holds open as the folder the user gave and its name (``/proc/<pid>/fd/N/x.img`` means
    nothing to the user, and the message stays in the job history and on the dashboard)."""
    text = os.fspath(path)
    parent, _, name = text.rpartition("/")
    folder = _OPEN_FOLDERS.get(parent)
    return text if folder is None else str(folder / name)


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
        f"cannot write the restore to {shown_path(path)}: {why}; nothing was left behind"
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


def check_target(final: Path, *, force: bool = False, new_file: bool = False) -> bool:
    """Refuse ``final`` as a restore target as ``restore_target`` would, before anything is
    restored (its checks when it starts; it checks again as it writes): a name taken
    without ``force``, a folder that is missing or not one. True for a block device written
    in place (not ``new_file``)."""
    if _check_name(final, force=force, new_file=new_file):
        return True
    os.close(_open_folder(final))
    return False


def _check_name(final: Path, *, force: bool, new_file: bool) -> bool:
    """``check_target`` but for the folder: True for a device written in place."""
    shown = shown_path(final)
    try:
        st = os.stat(final)  # follows a symlink: /dev/vg/lv names a device through one
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise target_failure(final, exc) from None
    is_device = st is not None and stat.S_ISBLK(st.st_mode)
    if is_device and not new_file:
        return True
    if st is None and not force:
        try:
            dangling = os.readlink(final)
        except OSError:  # nothing there (or no link): a new file
            dangling = None
        if dangling is not None:
            # Refused now, not when the restore is done and the link stands in its way.
            raise TargetExists(
                f"{shown} is a symlink to the missing {dangling}: give --force to replace "
                "the link (it is never written through)"
            )
    if st is not None:
        if not force:
            raise TargetExists(f"{shown} exists: give --force to replace it")
        if not (stat.S_ISREG(st.st_mode) or is_device):
            raise UsageError(f"restore target {shown} is neither a file nor a block device")
    return False


def _open_folder(final: Path) -> int:
    """A descriptor of the folder ``final`` goes in; one line if there is none."""
    try:
        return os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"directory {Path(shown_path(final)).parent} does not exist") from None
    except NotADirectoryError:
        raise UsageError(f"{Path(shown_path(final)).parent} is not a directory") from None
    except OSError as exc:
        raise target_failure(final, exc) from None


@contextmanager
def restore_target(
    final: Path, *, force: bool = False, new_file: bool = False
) -> Iterator[PreparedTarget]:
    """Prepare ``final`` for a restore (see the module's docstring).

    ``new_file``: vmvault chose the name (the files of a VM restored under a new name), so
    nothing found there was asked for, not even a block device or a symlink to one (planted
    by whoever can write the folder): it is refused like a file, and with ``force`` the name
    is replaced by the new file, the device is never written.
    """
    if _check_name(final, force=force, new_file=new_file):
        yield PreparedTarget(str(final), final, is_device=True)
        return
    folder = _open_folder(final)
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
            f"{shown_path(final)} appeared during the restore: give --force to replace it"
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
    restore elsewhere. A folder made here is removed again if the restore fails and left
    it empty (the caller removes its own files first), so the name can be used again.
    """
    directory = Path(os.path.abspath(directory))
    if confine_to is None:
        name = directory.name or "."  # "/" itself: opened, never made
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise target_failure(directory, exc) from None
        parent_path, nofollow, mode = directory.parent, 0, 0o777  # --to may be a symlink
    else:
        root = confine_to.resolve()
        name = directory.name
        if directory.parent != root or name in ("", ".", ".."):
            raise UsageError(f"{directory} is not a folder directly inside {root}")
        parent_path, nofollow, mode = root, os.O_NOFOLLOW, 0o700
    try:
        parent = os.open(parent_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise target_failure(parent_path, exc) from None
    try:
        try:
            os.mkdir(name, mode, dir_fd=parent)
            made = True
        except FileExistsError:
            if confine_to is not None:
                raise TargetExists(f"{directory} exists already: choose another name") from None
            made = False
        except OSError as exc:
            raise target_failure(directory, exc) from None
        try:
            folder = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | nofollow, dir_fd=parent
            )
        except OSError as exc:
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(name, dir_fd=parent)
            raise target_failure(directory, exc) from None
        through_fd = f"/proc/{os.getpid()}/fd/{folder}"
        _OPEN_FOLDERS[through_fd] = directory
        try:
            yield Path(through_fd)
        except BaseException:
            if made:
                with contextlib.suppress(OSError):  # not empty: what is in it stays
                    os.rmdir(name, dir_fd=parent)
            raise
        finally:
            del _OPEN_FOLDERS[through_fd]
            os.close(folder)
    finally:
        os.close(parent)
