"""Housekeeping of a task memory: a consistent export, compaction, and its size on disk.

Both operations are safe while other processes use the store: the export reads one SQLite
snapshot (the backup API) and builds the copy in a temporary folder that is renamed into place;
compaction finds orphan tensor files under the write lock, when no add is between writing its
file and committing its row. :class:`~mnemeta.store.TaskMemory` calls them under its own lock.
"""

from __future__ import annotations

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
from mnemeta.store.schema import DB, INDEX, TENSORS, write_marker

STALE_TMP_S = 600.0  # compact() removes temp files this old: no live write takes that long
_USED_PARAMS = "SELECT params FROM tasks WHERE params NOT NULL"


def export(records: Records, cache: IndexCache, dest: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a consistent copy of the store to the new folder ``dest``; returns a summary.

    The records are one snapshot (SQLite's backup API), with the tensor files they name and
    an index covering a prefix of them (the copy catches up the rest when opened). Built in
    a temporary folder beside ``dest`` and renamed into place: ``dest`` appears whole or not
    at all.
    """
    out = Path(dest)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out} exists and is not empty; export into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        cache.catch_up()
        (tmp / TENSORS).mkdir()
        if cache.index.ntotal:  # before the snapshot: it covers a prefix of the snapshot
            cache.write(tmp / INDEX)
        copy = sqlite3.connect(tmp / DB, isolation_level=None)
        try:
            records.retry(lambda: records.conn.backup(copy), "copying records")
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": str(out), "count": count, "disk_bytes": disk_bytes(out)}


def compact(records: Records, cache: IndexCache) -> dict[str, Any]:
    """Remove orphan tensor files and stale temp files, VACUUM, rebuild and save the index.

    Safe while other processes use the store: orphans are found under the write lock, when
    no add is between writing its file and committing its row. The rebuild retrains IVF
    cells for the current size; for HNSW it costs as much as adding every record again.
    """
    path = records.path
    before = disk_bytes(path)

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
    # Temp files of index or marker writes that a killed process left behind; a live
    # writer's temp file is seconds old.
    now = time.time()
    for entry in path.iterdir():
        temp = entry.name.startswith(".") and entry.name.endswith(".tmp")
        if temp and entry.is_file() and now - entry.stat().st_mtime > STALE_TMP_S:
            entry.unlink(missing_ok=True)
            removed += 1
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
