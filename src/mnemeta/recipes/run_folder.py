"""A run's folder, held by one process from its first check to its last write.

Shared by the training recipes and the demo. Before any data is built, :meth:`RunFolder.open`

1. checks that the folder can be written (not a file, no file in its path, not read-only, not
   forbidden), by creating it and a probe file in it;
2. takes the folder's lock, ``.mnemeta.lock``: an ``flock`` on that file, which names the
   holder's PID, host and start time for the message another process gets. The kernel drops
   an ``flock`` when its process dies, however it dies, so a lock file left by a killed run is
   stale by construction and simply taken over;
3. removes the temporary files of writes that were killed (``.NAME.XXXXXXXX.tmp``,
   :mod:`mnemeta.io`): with the lock held, no live writer can own them;
4. refuses a folder that holds a started or finished run, unless the run is resumed or
   ``--overwrite`` was given. Overwriting removes the run's files only once the new run has
   been built (:meth:`RunFolder.begin`), so a run that fails to start destroys nothing, and says
   which files it removes. Files mnemeta did not write are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from mnemeta.errors import RunFolderError

#: What a run writes into its folder; ``--overwrite`` removes these and nothing else.
RUN_FILES = (
    "checkpoint.pt",
    "config.json",
    "metrics.jsonl",
    "metrics.csv",
    "result.json",
    "result.md",
    "curves.png",
    "copy_weights.png",
    "sinusoid.png",
    "tensorboard",
)
#: Any of these means a run was started here.
_STARTED = ("checkpoint.pt", "config.json", "metrics.jsonl", "result.json")
LOCK_NAME = ".mnemeta.lock"


class RunFolder:
    """The folder ``path`` of one run, checked and locked for the life of the ``with`` block.

    Args:
        path: the run folder.
        resume: the run continues the one in the folder (its files are kept).
        overwrite: the user asked to replace a run that is already there.
        flag: how the user names the folder, for messages (``--out``).
    """

    def __init__(
        self, path: Path, *, resume: bool = False, overwrite: bool = False, flag: str = "--out"
    ) -> None:
        self.path, self.resume, self.overwrite, self.flag = Path(path), resume, overwrite, flag
        self._lock: int | None = None
        self._created: list[Path] = []  # folders this run made, removed again if it never began
        self._begun = False

    def __enter__(self) -> RunFolder:
        self.open()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        if not self._begun:
            # A run that failed before writing anything leaves no empty folder behind.
            for folder in self._created:
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def open(self) -> None:
        """Check, lock and clean the folder; refuse it if it holds a run this one would replace
        unasked. Cheap, and meant to run before any data is built."""
        self._created = check_writable_folder(self.path, self.flag)
        self._lock = _acquire_lock(self.path, self.flag)
        try:
            remove_orphan_temps(self.path)
            if not self.resume and not self.overwrite:
                existing = self.run_files()
                if any(name in existing for name in _STARTED):
                    state = "a finished" if "result.json" in existing else "a started"
                    raise RunFolderError(
                        f"{self.flag} {self.path} already holds {state} run "
                        f"({', '.join(existing)}); continue it with --resume, replace it with "
                        f"--overwrite, or write elsewhere with {self.flag}"
                    )
        except BaseException:
            self.close()
            raise

    def begin(self) -> list[str]:
        """Called once the new run is built, right before it writes: with ``overwrite`` (and not
        resuming), remove the previous run's files, say which, and return their names."""
        self._begun = True
        if self.resume or not self.overwrite:
            return []
        removed = self.run_files()
        for name in removed:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        if removed:
            print(f"--overwrite: removed {', '.join(removed)} from {self.path}", file=sys.stderr)
        return removed

    def run_files(self) -> list[str]:
        """The names of :data:`RUN_FILES` present in the folder."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def close(self) -> None:
        if self._lock is None:
            return
        # Unlink first, then unlock: a process waiting on the old file re-checks that the name
        # still points at the file it locked (see _acquire_lock), so it never holds a lock on
        # a file that no longer exists while a third process locks a new one.
        with contextlib.suppress(OSError):
            os.unlink(self.path / LOCK_NAME)
        os.close(self._lock)
        self._lock = None


def check_writable_folder(path: Path, flag: str) -> list[Path]:
    """Refuse, in one line, a folder that cannot be created or written; create it otherwise.
    Returns the folders it created, deepest first."""
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{flag} {path} is a file, not a folder; give a folder for the run")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(
                    f"{flag} {path}: {parent} is a file, not a folder; choose another {flag}"
                )
            break
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".mnemeta-write-test-{os.getpid()}.tmp"
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise RunFolderError(
            f"{flag} {path} cannot be written ({e.strerror or e}); choose another {flag}"
        ) from None
    return created


def remove_orphan_temps(folder: Path) -> list[str]:
    """Remove the temporary files of killed atomic writes (``.NAME.XXXXXXXX.tmp``) in ``folder``.

    Only safe while the folder's lock is held: an unlocked folder may have a live writer.
    """
    removed = []
    for p in folder.glob(".*.tmp"):
        if p.is_file() and p.name != LOCK_NAME:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p.name)
    return removed


def _acquire_lock(folder: Path, flag: str) -> int | None:
    """An open file descriptor holding the ``flock`` of ``folder``'s lock file (None where the
    platform has no ``flock``: the folder is then checked but not locked)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    path = folder / LOCK_NAME
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderError(
                f"{flag} {folder} is in use by another mnemeta process ({holder}); wait for "
                f"it to finish, or write elsewhere with {flag}"
            ) from None
        # The holder before us may have unlinked the file between our open and our flock: then
        # we hold a lock on a file nobody else can find. Retry on the current one.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        return fd
    raise RunFolderError(f"could not lock {flag} {folder}; try again")  # pragma: no cover


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(info["since"])))
        return f"PID {info['pid']} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its PID is unknown"
