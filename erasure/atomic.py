"""Atomic writes: a crash or a concurrent reader never sees half a file or folder.

Everything is written under a temporary name in the destination's folder (same file
system) and moved onto the destination only once complete; on an exception the
temporary file or folder is removed and the destination is left as it was.

Two ways to publish the finished result:

- ``replace=True`` (``--overwrite``): ``os.replace``, one atomic step that replaces
  whatever is there.
- ``replace=False``: a step that fails when the destination exists, so that of two
  writers racing for the same name exactly one succeeds and the other gets
  "already exists" (checking ``exists()`` first and renaming after is not one step).
  A file is hard-linked to its final name (``link`` never replaces); a folder is
  renamed, which fails onto a folder that is not empty.

Temporary names carry the host and process id of their writer
(``.<name>.<host>-<pid>.<random>.tmp``), so that ``remove_orphans`` can delete what a
killed writer left behind without touching the files of a writer still running.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ErasureError

__all__ = ["atomic_dir", "atomic_path", "atomic_write", "remove_orphans", "reported_write_errors"]

# Errors of os.link on file systems without hard links (FAT, some network and FUSE mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


def _already_exists(path: Path) -> ErasureError:
    return ErasureError(f"{path} already exists: pass --overwrite (overwrite=True) to replace it")


def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{_owner()}."


@contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    Args:
        path: the destination file.
        replace: replace an existing ``path``; if ``False``, an existing one (even one
            that appeared while writing) raises ``ErasureError`` and is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; what we write is meant to be read
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new_file(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _publish_new_file(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise _already_exists(path) from None
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
    # No hard links here: claim the name (O_EXCL fails if it exists), then move the
    # complete file onto the claim. A reader may briefly see an empty file.
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise _already_exists(path) from None
    os.replace(tmp, path)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], replace: bool = True) -> None:
    """Call ``write(tmp_path)`` (a ``str``), then move the result onto ``path``.

    Args:
        path: the destination file.
        write: writes the complete file at the path it is given.
        replace: as for ``atomic_path``.
    """
    with atomic_path(path, replace=replace) as tmp:
        write(str(tmp))


def _make_readable(folder: Path) -> None:
    """Some writers create private (0600) files; what we write is meant to be read."""
    os.chmod(folder, 0o755)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


@contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it becomes ``path``.

    Args:
        path: the destination folder.
        replace: replace an existing ``path``; if ``False``, an existing one raises
            ``ErasureError`` and is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temporary_prefix(path)))
    try:
        yield tmp
        _make_readable(tmp)
        if replace:
            _replace_folder(tmp, path)
        else:
            _publish_new_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.{_owner()}.old")
    os.replace(path, old)
    os.replace(tmp, path)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _publish_new_folder(tmp: Path, path: Path) -> None:
    # rename() fails onto a file or a folder that is not empty; onto an empty folder it
    # succeeds, so an empty result is published with mkdir(), which fails onto anything.
    if path.exists() or path.is_symlink():
        raise _already_exists(path)
    try:
        if any(tmp.iterdir()):
            os.rename(tmp, path)
        else:
            os.mkdir(path)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise _already_exists(path) from None
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphans(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that killed writers of ``path`` left.

    Only those written on this host by a process that no longer exists are removed: a
    writer still running keeps its temporary file.

    Args:
        path: the destination whose leftovers to remove.

    Returns:
        The paths removed.
    """
    path = Path(path)
    prefix = f".{path.name}.{socket.gethostname()}-"
    removed = []
    try:
        entries = [entry for entry in path.parent.iterdir() if entry.name.startswith(prefix)]
    except OSError:  # no folder yet, or not readable: nothing of ours is there
        return removed
    for entry in entries:
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextmanager
def reported_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a write that fails for a reason outside the program (disk full, permissions,
    a vanished folder) into a one-line ``ErasureError``; use around an atomic write,
    which has then left nothing behind.

    Args:
        path: what was being written, for the message.
    """
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as error:
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
        elif "I/O error: " in str(error):  # safetensors reports the OS's error inside its own
            reason = str(error).split("I/O error: ", 1)[1]
        else:
            raise
        raise ErasureError(
            f"could not write {path} ({reason}): nothing was written; free space or choose another path"
        ) from None
