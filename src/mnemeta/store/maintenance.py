"""Housekeeping of a task memory: a consistent export, compaction, stale temp files, and its
size on disk.

Both operations are safe while other processes use the store: the export reads one SQLite
snapshot (the backup API) and builds the copy in a temporary folder that is renamed into place;
compaction finds orphan tensor files under the write lock, when no add is between writing its
file and committing its row. Both check what SQLite holds first (the export its copy, compaction
the store), so that neither hands out nor "cleans" a damaged store.
:class:`~mnemeta.store.TaskMemory` calls them under its own lock.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnemeta.errors import StoreError
from mnemeta.io import fsync_dir, fsync_file
from mnemeta.store.index_cache import IndexCache
from mnemeta.store.records import Records
from mnemeta.store.schema import DB, INDEX, TENSORS, check_health, write_marker

# Temp files of atomic writes (``.NAME.XXXXXXXX.tmp``, mnemeta.io) this old are left by killed
# writers: a live write of even a 1 GB index takes seconds and keeps touching its file. Removed
# by compact() and by every writable open; a younger one may belong to another process's write.
STALE_TMP_S = 600.0
_USED_PARAMS = "SELECT params FROM tasks WHERE params NOT NULL"


def export(records: Records, cache: IndexCache, dest: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a consistent copy of the store to the new folder ``dest``; returns a summary.

    The records are one snapshot (SQLite's backup API), with the tensor files they name and
    an index covering a prefix of them (the copy catches up the rest when opened). Built in
    a temporary folder beside ``dest`` and renamed into place: ``dest`` appears whole or not
    at all.
    """
    out = Path(dest)
    tmp = export_folder(records.path, out)
    with building_copy(tmp, out):
        cache.catch_up()
        (tmp / TENSORS).mkdir()
        if cache.index.ntotal:  # before the snapshot: it covers a prefix of the snapshot
            cache.write(tmp / INDEX)
        copy = sqlite3.connect(tmp / DB, isolation_level=None)
        try:
            records.retry(lambda: records.conn.backup(copy), "copying records")
            # The backup copies pages as they are: never hand out a copy SQLite finds damaged
            # (integrity_check: an index entry that no longer matches its row passes the
            # quick_check of every open, and would make the copy's compact refuse).
            check_health(copy, records.db, full=True, unchanged=True)
            copy.execute("PRAGMA journal_mode=WAL")
            rels = [r[0] for r in copy.execute(_USED_PARAMS)]
            count = int(copy.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
            meta = {str(k): str(v) for k, v in copy.execute("SELECT key, value FROM meta")}
        finally:
            copy.close()
        folders = {tmp / TENSORS}
        for rel in rels:
            target = tmp / TENSORS / rel
            target.parent.mkdir(exist_ok=True)
            folders.add(target.parent)
            shutil.copyfile(records.tensors / rel, target)
            fsync_file(target)
        fsync_file(tmp / DB)
        for folder in folders:
            fsync_dir(folder)
        write_marker(tmp, meta)
        fsync_dir(tmp)
        os.replace(tmp, out)  # POSIX: replaces a missing or empty folder atomically
        fsync_dir(out.parent)
    return {"path": str(out), "count": count, "disk_bytes": disk_bytes(out)}


@contextlib.contextmanager
def building_copy(tmp: Path, out: Path) -> Iterator[None]:
    """The body that builds a copy in ``tmp`` and renames it to ``out``: if it fails, ``tmp``
    is removed, and an OS error (a full disk, no permission) becomes the one-line
    :class:`StoreError` that says nothing was exported."""
    try:
        yield
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(
            f"cannot write the copy at {out} ({e}); nothing was exported. Check the free space "
            "and permissions there, or pass another folder"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_folder(store: Path, out: Path) -> Path:
    """Check the destination ``out`` of an export of ``store``; make and return the temp folder
    beside it in which the copy is built (renamed to ``out`` when whole)."""
    here, there = store.resolve(), out.resolve()
    if there == here or here in there.parents:
        where = (
            "is the task memory itself" if there == here else f"is inside the task memory {store}"
        )
        raise StoreError(
            f"{out} {where}; nothing was exported. Export into a new folder outside the store"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out} exists and is not empty; export into a new folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.export-{secrets.token_hex(4)}.tmp"
        tmp.mkdir()
    except OSError as e:
        raise StoreError(
            f"cannot create the folder for the copy at {out} ({e}); nothing was exported. Pass "
            "a destination whose parent is a folder you may write to"
        ) from None
    return tmp


def compact(records: Records, cache: IndexCache) -> dict[str, Any]:
    """Remove orphan tensor files and stale temp files, VACUUM, rebuild and save the index.

    Safe while other processes use the store: orphans are found under the write lock, when
    no add is between writing its file and committing its row. The rebuild retrains IVF
    cells for the current size; for HNSW it costs as much as adding every record again.
    """
    path = records.path
    before = disk_bytes(path)
    # Before anything is removed: a damaged table could hide rows, whose tensor files would
    # then look like orphans. integrity_check also compares every index entry with its row.
    check_health(records.conn, records.db, full=True, unchanged=True)

    def drop_orphans() -> int:
        conn = records.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            used = {r[0] for r in conn.execute(_USED_PARAMS)}
            removed = 0
            for folder in sorted(records.tensors.iterdir()) if records.tensors.is_dir() else []:
                if not folder.is_dir():
                    continue
                for file in folder.iterdir():
                    if f"{folder.name}/{file.name}" not in used:
                        file.unlink()
                        removed += 1
                if not any(folder.iterdir()):
                    folder.rmdir()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return removed

    removed = records.retry(drop_orphans, "removing orphan files")
    removed += remove_stale_temps(path)
    records.retry(lambda: records.conn.execute("VACUUM"), "vacuuming")
    records.retry(lambda: records.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"), "checkpointing")
    cache.rebuild()
    return {
        "path": str(path),
        "count": cache.index.ntotal,
        "removed_files": removed,
        "bytes_before": before,
        "bytes_after": disk_bytes(path),
    }


def remove_stale_temps(folder: Path) -> int:
    """Remove the temp files of index or marker writes that killed processes left in the store's
    folder (older than :data:`STALE_TMP_S`); returns how many. Younger ones are left: they may be
    another process's write in progress."""
    removed = 0
    now = time.time()
    for entry in folder.iterdir():
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        try:
            if entry.is_file() and now - entry.stat().st_mtime > STALE_TMP_S:
                entry.unlink()
                removed += 1
        except OSError:  # renamed into place or removed meanwhile, or not ours to remove
            continue
    return removed


def _walk(folder: Path) -> Iterator[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(Path(entry.path))
            else:
                yield entry


def disk_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (their sizes, not the blocks they use)."""
    total = 0
    for entry in _walk(folder):
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:  # removed meanwhile (a temp file renamed, an orphan dropped)
            continue
    return total
