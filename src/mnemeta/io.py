"""Atomic, durable file writes that follow the user's umask.

A write goes to a fresh hidden file beside the target (``.NAME.XXXXXXXX.tmp``: same folder, so
same filesystem, so the rename is atomic), is flushed and fsynced, then renamed over the target
with ``os.replace``, and the folder is fsynced so that the rename itself survives a power cut.
Readers see the old file or the new one, never half of one; a writer that raises (or is
interrupted) leaves the old file as it was and no temporary file behind. A writer killed with
kill -9 can leave its temporary file: the names end in ``.tmp`` so that cleaners can find them
(:meth:`mnemeta.store.TaskMemory.compact` removes old ones).

Permissions: the temporary file is created by ``open(..., "xb")``, i.e. ``O_CREAT | O_EXCL``
with mode ``0o666``, and the kernel applies the process's umask (or the folder's default ACL)
when it creates the file. So the result is ``0o666 & ~umask`` (0o644 under umask 022, 0o664
under 002), like any file the user's tools write. ``tempfile.mkstemp`` would give 0o600, which
``os.replace`` keeps: a shared task memory, cache or run folder would become unreadable to the
rest of a team. Letting the kernel apply the umask also avoids reading it: ``os.umask`` can only
be read by setting it, and ``os.umask(0)`` followed by a restore is racy when another thread
creates a file in between (that file would get mode 0o666).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir", "fsync_file"]

_TEMP_TRIES = 100  # 8 random hex digits per name: a collision is already a one-in-4-billion event


def atomic_write_bytes(
    path: str | os.PathLike[str],
    write: Callable[[BinaryIO], object] | bytes,
    *,
    fsync: bool = True,
) -> None:
    """Replace ``path`` atomically with what ``write(file)`` writes (or with the given bytes).

    Args:
        path: the file to create or replace; its folder is created if needed.
        write: called once with the temporary file open for binary writing; or the bytes
            themselves.
        fsync: fsync the file before the rename and the folder after it (the default). Pass
            False only for files that are checked on every read and rebuilt when damaged
            (caches): the write stays atomic for other processes, but a power cut may leave an
            empty or partial file behind.

    If ``write`` raises, the exception propagates, ``path`` is untouched and the temporary file
    is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, f = _create_temp(target)
    try:
        with f:
            if isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        # BaseException too: a Ctrl-C in the middle of a write must not leave a temp file.
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    """Replace ``path`` atomically with ``text`` as UTF-8 (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's content to disk (e.g. one copied by ``shutil.copyfile``)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a folder's entries (new files, renames) durable."""
    if os.name != "posix":  # Windows cannot open a folder; NTFS journals its entries itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(target: Path) -> tuple[Path, BinaryIO]:
    """A new, empty, hidden file beside ``target``, open for writing, mode ``0o666 & ~umask``."""
    for _ in range(_TEMP_TRIES):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            # "x": O_CREAT | O_EXCL, never an existing file (or a symlink planted at that name).
            return tmp, open(tmp, "xb")  # closed by the caller's `with`
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {target}")
