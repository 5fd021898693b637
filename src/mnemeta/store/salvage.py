"""Copy what is still readable out of a damaged task memory, into a new, healthy one.

    report = salvage("runs/memory", "runs/memory-rescued")
    report["count"], report["lost_ids"]        # records copied; ids that could not be read

:meth:`TaskMemory.export <mnemeta.store.TaskMemory.export>` copies SQLite's pages as they are
(the backup API), so a damaged file gives a damaged copy, and a damaged store cannot be opened to
export it. :func:`salvage` reads the records one range at a time instead, skipping what SQLite
cannot read, and writes them, with their original ids, into a fresh tasks.sqlite:

- **Which ids existed**: ids are given out in order and rows are never deleted, so the store
  held every id from 1 to its largest. The largest is the highest of what is still readable of
  ``sqlite_sequence``, ``MAX(id)``, the time index and the saved FAISS index's header.
- **Rows**: read by ranges of ids; a range that fails is read again id by id, so one broken page
  costs only its own rows. A row whose values do not fit (an embedding of the wrong size, info
  that is not a JSON object, ...) counts as lost.
- **Parameters**: each tensor file is parsed before it is copied; a record whose file is missing
  or damaged is kept without its parameters and reported.
- **The copy**: built in a temporary folder beside ``dest``, opened once as a task memory (which
  checks it and builds its index), then renamed into place: ``dest`` appears whole or not at
  all. It keeps the store id, and its id sequence continues after the lost ids, so they are
  never given to new records.

The source is opened read-only and never changed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load as tensors_from_safetensors_bytes

from mnemeta.errors import StoreError
from mnemeta.io import fsync_dir, fsync_file
from mnemeta.store import index as index_mod
from mnemeta.store.maintenance import building_copy, disk_bytes, export_folder
from mnemeta.store.records import APP_PREFIX, PARAMS_NAME
from mnemeta.store.schema import (
    DB,
    FORMAT,
    INDEX,
    MARKER,
    SCHEMA,
    TENSORS,
    VERSION,
    StoreDamaged,
    check_health,
    read_marker,
    truncation,
    truncation_note,
    write_marker,
)
from mnemeta.store.task_memory import TaskMemory

__all__ = ["salvage"]

_RANGE = 1000  # ids per range read; a failed range is re-read id by id
_META_KEYS = ("format", "version", "dim", "metric", "index", "store_id", "created")
_COLUMNS = "id, time, embedding, info, metrics, params"


def salvage(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> dict[str, Any]:
    """Copy every readable record of the task memory at ``path`` into the new folder ``dest``.

    Returns ``{"path", "count", "expected", "lost_ids", "params_lost_ids", "damage",
    "disk_bytes"}``: records copied, records the store held, ids that could not be read, ids
    copied without their (missing or damaged) tensor file, and what was found wrong with the
    source (``None`` if SQLite's check passed). Raises :class:`~mnemeta.errors.StoreError` if no
    record can be read (then nothing is written). Run it while no other process writes to the
    store: it reads a copy of tasks.sqlite and its WAL.
    """
    src = Path(path)
    db = src / DB
    out = Path(dest)
    if not db.is_file():
        raise StoreError(
            f"{src} holds no {DB}; there is nothing to export. Restore the store from a backup"
        )
    tmp = export_folder(src, out)
    with building_copy(tmp, out):
        scratch, truncated = _scratch_copy(db, tmp)
        conn = sqlite3.connect(scratch, isolation_level=None)
        try:
            meta = _meta(conn, src)
            damage = truncated or _damage(conn, db) or _unreadable(conn)
            top = _largest_id(conn, src, meta["store_id"])
            result = _copy(conn, tmp, src, meta, top)
        finally:
            conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{scratch}{suffix}").unlink(missing_ok=True)
        if not result["count"]:
            raise StoreError(
                f"{db} is damaged ({damage or 'unreadable'}) and none of its records can be "
                "read; nothing was exported. Restore the store from a backup"
            )
        write_marker(tmp, meta)
        # Opening it checks the copy and builds its index; closing saves the index.
        TaskMemory(tmp, create=False).close()
        fsync_dir(tmp)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    return {"path": str(out), **result, "damage": damage, "disk_bytes": disk_bytes(out)}


def _scratch_copy(db: Path, tmp: Path) -> tuple[Path, str | None]:
    """A copy of ``db`` and its WAL in ``tmp``, to read without touching the source.

    A truncated file is padded with zero pages up to the size its header gives: SQLite refuses
    every query of a file shorter than its header says, but reads the surviving pages of a
    padded one (the zero pages fail like any damaged page). Returns the copy and, if it was
    padded, what to report.
    """
    scratch = tmp / ".source.sqlite"
    shutil.copyfile(db, scratch)
    wal = Path(f"{db}-wal")
    if wal.is_file():
        shutil.copyfile(wal, Path(f"{scratch}-wal"))
    short = truncation(scratch)
    if short is None:
        return scratch, None
    with open(scratch, "r+b") as f:
        f.truncate(short[2])
    return scratch, truncation_note(short)


def _unreadable(conn: sqlite3.Connection) -> str | None:
    """Why the records table cannot be read though quick_check passed (an emptied file)."""
    try:
        conn.execute("SELECT id FROM tasks LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        return str(e)
    return None


def _meta(conn: sqlite3.Connection, src: Path) -> dict[str, str]:
    """The store's facts from its meta table, else from its marker (written from the same)."""
    try:
        meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError:
        meta = {}
    if meta.get("format") == FORMAT and all(k in meta for k in _META_KEYS):
        if meta["version"] != str(VERSION):
            raise StoreError(
                f"{src / DB} has task memory format version {meta['version']}, this mnemeta "
                f"reads version {VERSION}; export it with the mnemeta that wrote it"
            )
        return {k: meta[k] for k in _META_KEYS}
    try:
        marker = read_marker(src / MARKER)
    except StoreError:
        raise StoreError(
            f"{src / DB} is damaged and neither its meta table nor {MARKER} can be read, so its "
            "embedding size is unknown; nothing was exported. Restore the store from a backup"
        ) from None
    return {k: str(marker[k]) for k in _META_KEYS if k in marker} | {"version": str(VERSION)}


def _damage(conn: sqlite3.Connection, db: Path) -> str | None:
    """What SQLite's integrity_check says of the source, on one line (None: it passed)."""
    try:
        check_health(conn, db, full=True, unchanged=True)
    except StoreDamaged as e:
        return e.detail
    return None


def _try(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """The rows of ``sql`` up to the first one SQLite cannot read."""
    out: list[Any] = []
    try:
        cur = conn.execute(sql, args)
        while batch := cur.fetchmany(256):
            out += batch
    except sqlite3.DatabaseError:
        pass
    return out


def _largest_id(conn: sqlite3.Connection, src: Path, store_id: str) -> int:
    """The largest id the store gave out, from every source that is still readable."""
    found = [0]
    for sql in (
        "SELECT seq FROM sqlite_sequence WHERE name = 'tasks'",
        "SELECT MAX(id) FROM tasks",
        "SELECT MAX(id) FROM tasks INDEXED BY tasks_by_time",
    ):
        found += [int(r[0]) for r in _try(conn, sql) if isinstance(r[0], int)]
    try:
        header = index_mod.read_header(src / INDEX)
        if header.get("store_id") == store_id and isinstance(header.get("max_id"), int):
            found.append(int(header["max_id"]))
    except (index_mod.IndexFileError, ValueError, TypeError):
        pass
    return max(found)


def _copy(
    conn: sqlite3.Connection, tmp: Path, src: Path, meta: dict[str, str], top: int
) -> dict[str, Any]:
    """Copy the readable rows with ids 1..``top`` (and any readable above) and their tensor
    files into a new tasks.sqlite in ``tmp``, one range of ids at a time."""
    dim = int(meta["dim"])
    copy = sqlite3.connect(tmp / DB, isolation_level=None)
    (tmp / TENSORS).mkdir()
    folders = {tmp / TENSORS}
    lost: list[int] = []
    params_lost: list[int] = []
    count = last = 0

    def keep(rows: list[tuple[Any, ...]]) -> None:
        nonlocal count, last
        kept = []
        for row in rows:
            rid, t, blob, info, metrics, rel = row
            if rel is not None and not _copy_params(src, tmp, rel, folders):
                params_lost.append(rid)
                rel = None
            kept.append((rid, t, blob, info, metrics, rel))
        copy.executemany(f"INSERT INTO tasks({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", kept)
        count += len(kept)
        last = max([last] + [r[0] for r in kept])

    try:
        copy.execute("PRAGMA journal_mode=WAL")
        copy.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA:
            copy.execute(statement)
        copy.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
        # Applications' state (the classifier's class table) when it can still be read.
        copy.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?)",
            _try(conn, "SELECT key, value FROM meta WHERE key LIKE ?", (APP_PREFIX + "%",)),
        )
        one = f"SELECT {_COLUMNS} FROM tasks WHERE id = ?"
        for start in range(1, top + 1, _RANGE):
            end = min(top, start + _RANGE - 1)
            got = _rows_in(conn, start, end, dim)
            # A range read can fail, or stop short without an error at a damaged page: read
            # what it missed id by id, so that a broken page costs only its own rows.
            for rid in range(start, end + 1):
                if rid not in got:
                    for row in _try(conn, one, (rid,)):
                        if row[0] == rid and _valid(row, dim):
                            got[rid] = row
                if rid not in got:
                    lost.append(rid)
            keep([got[k] for k in sorted(got)])
        # Rows above every readable maximum (their pages are where MAX(id) failed).
        above = f"SELECT {_COLUMNS} FROM tasks WHERE id > ? ORDER BY id"
        keep([r for r in _try(conn, above, (top,)) if _fits(r, top + 1, None, dim)])
        # New records continue after every id the store gave out, lost ones included.
        copy.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'tasks'", (max(top, last),))
        copy.execute("COMMIT")
        copy.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        copy.close()
    fsync_file(tmp / DB)
    for folder in folders:
        fsync_dir(folder)
    return {
        "count": count,
        "expected": max(top, last),
        "lost_ids": lost,
        "params_lost_ids": params_lost,
    }


def _rows_in(conn: sqlite3.Connection, start: int, end: int, dim: int) -> dict[int, Any]:
    sql = f"SELECT {_COLUMNS} FROM tasks WHERE id BETWEEN ? AND ? ORDER BY id"
    return {r[0]: r for r in _try(conn, sql, (start, end)) if _fits(r, start, end, dim)}


def _fits(row: tuple[Any, ...], start: int, end: int | None, dim: int) -> bool:
    rid = row[0]
    in_range = isinstance(rid, int) and rid >= start and (end is None or rid <= end)
    return in_range and _valid(row, dim)


def _copy_params(src: Path, tmp: Path, rel: str, folders: set[Path]) -> bool:
    """Copy one tensor file if it parses; False if it is missing or damaged."""
    try:
        data = (src / TENSORS / rel).read_bytes()
        tensors_from_safetensors_bytes(data)  # parses, or raises for damaged bytes
    except Exception:  # missing, unreadable, or safetensors' own error
        return False
    target = tmp / TENSORS / rel
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(data)
    fsync_file(target)
    folders.add(target.parent)
    return True


def _valid(row: tuple[Any, ...], dim: int) -> bool:
    """Whether a row read from a damaged file holds values that a task memory could have."""
    rid, t, blob, info, metrics, rel = row
    if rid < 1 or not isinstance(t, (int, float)) or not math.isfinite(t):
        return False
    if not isinstance(blob, bytes) or len(blob) != 4 * dim:
        return False
    vec = np.frombuffer(blob, dtype="<f4")
    if not np.isfinite(vec).all() or not vec.any():
        return False
    if not isinstance(info, str) or not isinstance(metrics, str):
        return False
    try:
        if not isinstance(json.loads(info), dict) or not isinstance(json.loads(metrics), dict):
            return False
    except ValueError:
        return False
    return rel is None or (isinstance(rel, str) and bool(PARAMS_NAME.match(rel)))
