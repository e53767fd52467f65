"""Paths the user names: text files read with a one-line error, outputs checked before
any work, and a claim on each output for the length of a run.

A run that will write ``out.safetensors`` checks first that it can (the folder is, or
can be made, a writable folder with some free space; the name is not a folder; nothing
is there unless ``--overwrite``), then holds a lock next to it until the result is
published, so that a second run to the same output is refused when it starts, not after
its own hours of work. The lock is ``flock`` on ``.<name>.lock``: the kernel releases it
when its holder dies, so a killed run never blocks the next one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .atomic import remove_orphans
from .errors import ErasureError

try:
    import fcntl
except ImportError:  # Windows: no flock; the no-replace publish still keeps outputs whole
    fcntl = None

# Below this, a disk is full for any model this toolkit writes (mini-sd's weights are 1 MB,
# SD 1.x's cross-attention alone 40 MB): refuse before loading anything.
MIN_FREE_BYTES = 16 * 2**20


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of a file the user named, or a one-line ``ErasureError``.

    Args:
        path: the file.
        what: what it is, for the message (``"config file"``, ``"concepts file"``).
    """
    path = Path(path)
    if path.is_dir():
        raise ErasureError(f"{path} is a folder, not a {what}: give the file itself")
    if not path.is_file():
        raise ErasureError(f"{path}: no such {what}")
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not text
    except UnicodeDecodeError as error:
        raise ErasureError(
            f"{path} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}): give a plain-text {what}"
        ) from None
    except OSError as error:
        raise ErasureError(f"{path} cannot be read ({error.strerror}): check the {what}'s permissions") from None


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists (``path`` itself if it does), written
    as the user wrote ``path`` (relative stays relative)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(path: str | os.PathLike, overwrite: bool, folder: bool = False, flag: str = "--output") -> None:
    """Refuse, before any work, an output that cannot be written.

    Args:
        path: the file (or, with ``folder``, the folder) to be written.
        overwrite: whether an existing output may be replaced.
        folder: the output is a folder (a diffusers pipeline export) rather than a file.
        flag: the option that named it, for the messages.
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise ErasureError(f"{flag} {path} is a folder: give a file name, e.g. {path / 'erased.safetensors'}")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ErasureError(f"{path} already exists: pass --overwrite to replace it")
        if folder and not path.is_dir():
            raise ErasureError(f"{path} exists and is not a folder: remove it or choose another {flag}")
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise ErasureError(f"{ancestor} is a file, not a folder: choose another {flag}")
    try:  # access() says yes to root on a read-only mount's folder; only writing tells
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise ErasureError(f"cannot write in {ancestor} ({error.strerror}): choose another {flag}") from None
    check_free_space(ancestor, MIN_FREE_BYTES, flag, why=f"less than the {_size(MIN_FREE_BYTES)} any model output needs")


def check_free_space(where: str | os.PathLike, needed: int, flag: str = "--output", why: str | None = None) -> None:
    """Refuse when the file system holding ``where`` has fewer than ``needed`` bytes free.

    Args:
        where: a path on that file system (the nearest existing ancestor is used).
        needed: bytes the output will take.
        flag: the option that named the output, for the message.
        why: what ``needed`` is, for the message (default: the output's expected size).
    """
    ancestor = _existing_ancestor(Path(where))
    free = shutil.disk_usage(ancestor).free
    if free < needed:
        raise ErasureError(
            f"only {_size(free)} free in {ancestor}, {why or f'the output needs about {_size(needed)}'}: "
            f"free some space or choose another {flag}"
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@contextmanager
def claimed_outputs(paths: list[Path]) -> Iterator[None]:
    """Hold a lock on each output for the block; refuse if another run holds one.

    Creates missing parent folders (and removes those it made if they are still empty
    at the end), removes what killed writers of these outputs left behind, and removes
    its lock files on the way out.

    Args:
        paths: the outputs this run will write (checked with ``check_output`` already).
    """
    with ExitStack() as stack:
        for path in paths:
            stack.enter_context(_claimed(Path(path)))
        yield


@contextmanager
def _claimed(path: Path) -> Iterator[None]:
    made = _make_parents(path.parent)
    try:
        if fcntl is None:
            remove_orphans(path)
            yield
            return
        lock = path.with_name(f".{path.name}.lock")
        handle = _lock(lock, path)
        try:
            remove_orphans(path)  # holding the lock: no other run of ours writes these
            yield
        finally:
            lock.unlink(missing_ok=True)
            handle.close()
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:  # not empty: it holds the output now
                break


def _make_parents(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if folder.is_dir():  # made meanwhile by another run
                continue
            raise ErasureError(f"{folder} exists and is not a folder: choose another --output") from None
        except OSError as error:
            raise ErasureError(f"cannot create {folder} ({error.strerror}): choose another --output") from None
        made.append(folder)
    return made


def _lock(lock: Path, path: Path):
    while True:
        try:
            handle = open(lock, "a+")
        except OSError as error:
            raise ErasureError(f"cannot write in {lock.parent} ({error.strerror}): choose another --output") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ErasureError(
                f"{path} is being written by another run ({holder}): wait for it to finish or choose another --output"
            ) from None
        # The previous holder may have removed the lock file between our open() and
        # flock(): then we hold a lock on a deleted file; take the current one instead.
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(handle.fileno()).st_ino:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()
