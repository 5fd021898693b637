"""The on-disk layout of a task memory, its SQLite schema, and safe opening of both.

A task memory is a folder::

    mnemeta-task-memory.json   format marker: magic, version, dim, metric, index kind, store id
    tasks.sqlite (+ -wal, -shm) the records; the source of truth (WAL mode)
    tensors/NNNNN/ID-TOKEN.safetensors   adapted parameters of record ID (if any)
    index.faiss                the vector index, a cache of the embeddings in tasks.sqlite

The marker is written last when a store is created, so a folder with the marker is a whole
store. The same facts (format, version, dim, index kind, store id) are kept in the ``meta`` table
of tasks.sqlite, the authority: two processes creating one store at the same moment agree on
them, and a tasks.sqlite moved between folders is still recognised.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mnemeta.errors import StoreError
from mnemeta.io import atomic_write_text

FORMAT = "mnemeta-task-memory"
VERSION = 1
METRIC = "cosine"
MARKER = "mnemeta-task-memory.json"
DB = "tasks.sqlite"
INDEX = "index.faiss"
TENSORS = "tensors"

# Waiting for the write lock is done by retry_busy(), not by SQLite's busy handler: the handler
# sleeps 1, 2, 5, 10, ... 100 ms between tries, so a writer often sleeps on after the lock is
# free. With 4 processes × 1000 adds, the writes took 3.7–4.4 s polling every 0.1–2 ms
# (jittered) against 4.5–5.0 s with a 5 s busy timeout (three runs each, shared 2-core machine).
BUSY_TIMEOUT_S = 0.0
BUSY_DEADLINE_S = 60.0
BUSY_SLEEP_MIN_S = 0.0001
BUSY_SLEEP_MAX_S = 0.002

# AUTOINCREMENT: ids are never reused, even if rows were ever deleted, so "every id above the
# index's max id is new" stays true. ``embedding`` is the float32 little-endian vector as added
# (not normalised), so the index can always be rebuilt from this table alone. ``info`` and
# ``metrics`` are JSON; ``params`` is a path under tensors/ or NULL. The index on ``time`` serves
# time queries and lets COUNT(*) read a small b-tree instead of every row's embedding.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tasks ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " time REAL NOT NULL,"
    " embedding BLOB NOT NULL,"
    " info TEXT NOT NULL,"
    " metrics TEXT NOT NULL,"
    " params TEXT)",
    "CREATE INDEX IF NOT EXISTS tasks_by_time ON tasks(time)",
)

# Names a store's folder may hold before its marker exists (a creation that is under way in
# another process, or that was interrupted): such a folder may be (re)used to create the store.
_CREATION_NAMES = {DB, f"{DB}-wal", f"{DB}-shm", f"{DB}-journal", TENSORS}

T = TypeVar("T")


_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class StoreDamaged(StoreError):
    """tasks.sqlite is damaged: restore a backup, or export the records that are still readable
    (``mnemeta memory export``, :func:`mnemeta.store.salvage`). ``detail`` is what was found."""

    detail: str = ""


def is_damage(e: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file itself is damaged (SQLITE_CORRUPT or SQLITE_NOTADB)."""
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    msg = str(e).lower()
    return "malformed" in msg or "not a database" in msg


def damaged(
    db: Path, detail: str, *, readable: bool = True, unchanged: bool = False
) -> StoreDamaged:
    """The error for a damaged tasks.sqlite: what SQLite found, and the two ways out.

    ``readable``: some records may still be readable, so exporting them is worth a try (not
    when SQLite cannot read the file at all). ``unchanged``: say that nothing was changed.
    """
    done = " nothing was changed." if unchanged else ""
    if readable:
        fix = (
            "Restore the store from a backup, or copy the records that are still readable into a "
            f"new folder with `mnemeta memory export {db.parent} NEW_FOLDER` "
            "(mnemeta.store.salvage in Python)"
        )
    else:
        fix = "Restore the store from a backup: no record can be read from this file"
    err = StoreDamaged(f"{db} is damaged ({detail});{done} {fix}")
    err.detail = detail  # kept by pickling: BaseException pickles __dict__
    return err


def truncation(db: Path) -> tuple[int, int, int] | None:
    """``(pages left, pages in the header, bytes it should have)`` if ``db`` is shorter than its
    header says (cut off by a full disk or a partial copy), else None."""
    try:
        with open(db, "rb") as f:
            header = f.read(100)
            size = f.seek(0, 2)
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(header[28:32], "big")
    if page < 512 or page & (page - 1) or size >= pages * page:
        return None
    return size // page, pages, pages * page


def truncation_note(short: tuple[int, int, int]) -> str:
    return f"truncated: {short[0]:,} of its {short[1]:,} pages are left"


def check_health(conn: sqlite3.Connection, db: Path, *, full: bool, unchanged: bool) -> None:
    """Raise :class:`StoreDamaged` unless SQLite's own check of ``db`` passes.

    ``full=False``: ``PRAGMA quick_check``, every page's structure, O(file size) but no index
    lookups (2 ms for 5,000 records of dim 256, 7 MB, in the page cache: see
    :class:`~mnemeta.store.TaskMemory`); ``full=True``: ``PRAGMA integrity_check``, which also
    checks that every index entry matches its row.
    """
    pragma = "integrity_check(1)" if full else "quick_check(1)"
    try:
        rows = retry_busy(
            lambda: conn.execute(f"PRAGMA {pragma}").fetchall(), path=db, what="checking it"
        )
    except sqlite3.DatabaseError as e:
        short = truncation(db)
        detail = truncation_note(short) if short else str(e)
        readable = "not a database" not in str(e)
        raise damaged(db, detail, readable=readable, unchanged=unchanged) from None
    if rows != [("ok",)]:
        raise damaged(db, f"SQLite's {pragma[:-3]}: {check_summary(rows)}", unchanged=unchanged)


def check_summary(rows: list[Any]) -> str:
    """The first problem a ``quick_check``/``integrity_check`` reported, on one line."""
    lines = [ln.strip() for r in rows for ln in str(r[0]).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("*** in database")]
    first = lines[0] if lines else "no detail"
    more = f", and {len(lines) - 1} more problem(s)" if len(lines) > 1 else ""
    return f"{first}{more}"


def store_error(
    e: sqlite3.DatabaseError, db: Path, what: str, conn: sqlite3.Connection | None = None
) -> StoreError:
    """A one-line error for any SQLite failure that retry_busy did not absorb.

    SQLite does not always call damage damage (VACUUM over a broken index page says "database
    or disk is full"), so with ``conn`` another error is followed by a quick_check.
    """
    if is_damage(e):
        return damaged(db, f"{e}, while {what}", readable="not a database" not in str(e))
    if conn is not None:
        try:
            check_health(conn, db, full=False, unchanged=False)
        except StoreDamaged as d:
            return d
        except (StoreError, sqlite3.Error):
            pass
    return StoreError(
        f"SQLite failed on {db} while {what} ({e}); check that its disk has free space and that "
        "you may read and write the store's files, then try again"
    )


@contextmanager
def sqlite_errors(db: Path, what: str, conn: sqlite3.Connection | None = None) -> Iterator[None]:
    """Turn a :class:`sqlite3.DatabaseError` raised inside into a :class:`StoreError`."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        raise store_error(e, db, what, conn) from None


def is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def retry_busy(fn: Callable[[], T], *, path: Path, what: str) -> T:
    """``fn()``, retried with jittered exponential backoff while the database is locked.

    Covers ``BEGIN IMMEDIATE`` while another process writes, and the rarer busy states of
    readers (a WAL being recovered after a crash). ``fn`` must be safe to repeat: it rolls back
    what it did before raising.
    """
    start = time.monotonic()
    delay = BUSY_SLEEP_MIN_S
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not is_busy(e):
                raise
            if time.monotonic() - start > BUSY_DEADLINE_S:
                raise StoreError(
                    f"{path} stayed locked for {BUSY_DEADLINE_S:.0f} s while {what} ({e}); "
                    "another process holds a long write transaction: wait for it, or stop it"
                ) from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, BUSY_SLEEP_MAX_S)


def connect(db: Path, *, read_only: bool, create: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit ``BEGIN IMMEDIATE``).

    ``mode=rw`` never creates a missing file (a store whose tasks.sqlite vanished must say so,
    not start empty); ``mode=ro`` refuses every write at the SQLite level.
    """
    mode = "ro" if read_only else ("rwc" if create else "rw")
    uri = f"{db.resolve().as_uri()}?mode={mode}"
    try:
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,  # TaskMemory serialises its own calls with a lock
        )
    except sqlite3.OperationalError as e:
        raise StoreError(
            f"cannot open {db} ({e}); the task memory is damaged or unreadable: restore it "
            "from a copy made by `mnemeta memory export`, or check its permissions"
        ) from None
    return conn


def not_a_store(db: Path, reason: str) -> StoreError:
    return StoreError(
        f"{db} is not a mnemeta task memory ({reason}); nothing was changed. Restore the folder "
        "from a copy made by `mnemeta memory export`, or pass the path of another folder"
    )


def read_meta(conn: sqlite3.Connection, db: Path, *, marked: bool = False) -> dict[str, str]:
    """The ``meta`` table, after checking that this is a task memory this code can read.

    ``marked``: the folder has a marker, so it was a whole store: a tasks.sqlite that SQLite
    cannot read, or that lost its tables, is a damaged store rather than another program's file.
    """

    def query() -> list[Any]:
        return conn.execute("SELECT key, value FROM meta").fetchall()

    try:
        rows = retry_busy(query, path=db, what="reading its metadata")
    except sqlite3.DatabaseError as e:  # "file is not a database", "no such table: meta", ...
        if not marked:
            raise not_a_store(db, str(e)) from None
        if "no such table" in str(e):
            raise damaged(
                db,
                f"{e}: the file was emptied or replaced",
                readable=False,
                unchanged=True,
            ) from None
        short = truncation(db)
        detail = truncation_note(short) if short else str(e)
        raise damaged(db, detail, readable="not a database" not in str(e), unchanged=True) from None
    meta = {str(k): str(v) for k, v in rows}
    if meta.get("format") != FORMAT:
        raise not_a_store(db, "its meta table names no mnemeta task memory format")
    if meta.get("version") != str(VERSION):
        raise StoreError(
            f"{db} has task memory format version {meta.get('version')}, this mnemeta reads "
            f"version {VERSION}; open it with the mnemeta that wrote it"
        )
    return meta


def read_marker(path: Path) -> dict[str, Any]:
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise StoreError(
            f"{path} is damaged ({type(e).__name__}: {e}); nothing was changed. Restore the "
            "folder from a copy made by `mnemeta memory export`"
        ) from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise StoreError(
            f"{path} is not a mnemeta task memory marker; nothing was changed. Pass the folder "
            "of a task memory, or a new folder to create one"
        )
    if marker.get("version") != VERSION:
        raise StoreError(
            f"{path.parent} has task memory format version {marker.get('version')}, this "
            f"mnemeta reads version {VERSION}; open it with the mnemeta that wrote it"
        )
    return marker


def marker_for(meta: dict[str, str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "dim": int(meta["dim"]),
        "metric": meta["metric"],
        "index": meta["index"],
        "store_id": meta["store_id"],
        "created": meta["created"],
        "note": (
            "records in tasks.sqlite (the source of truth), parameters in tensors/*.safetensors, "
            "index.faiss is rebuilt from tasks.sqlite when needed; open with "
            "mnemeta.store.TaskMemory(path)"
        ),
    }


def write_marker(folder: Path, meta: dict[str, str]) -> None:
    atomic_write_text(folder / MARKER, json.dumps(marker_for(meta), indent=2) + "\n")


def may_create_in(folder: Path) -> bool:
    """Whether ``folder`` (without a marker) is empty or holds only a store being created."""
    for entry in folder.iterdir():
        name = entry.name
        if name in _CREATION_NAMES:
            continue
        if name.startswith(f".{MARKER}.") and name.endswith(".tmp"):
            continue
        return False
    return True


def create_schema(
    conn: sqlite3.Connection, db: Path, *, dim: int, index: str, store_id: str
) -> dict[str, str]:
    """Create the tables (if absent) and the meta rows (if absent); return the meta table.

    Refuses a tasks.sqlite that already holds tables of something else: never add tables to
    another program's database.
    """
    sql = "SELECT name FROM sqlite_master WHERE type='table'"
    try:
        tables = {
            str(r[0])
            for r in retry_busy(lambda: conn.execute(sql).fetchall(), path=db, what="creating it")
        }
    except sqlite3.DatabaseError as e:
        raise not_a_store(db, str(e)) from None
    foreign = tables - {"meta", "tasks", "sqlite_sequence"}
    if foreign or (tables and "meta" not in tables):
        raise not_a_store(db, f"it holds other tables: {', '.join(sorted(tables))}")
    retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"), path=db, what="creating it")
    meta_rows = {
        "format": FORMAT,
        "version": str(VERSION),
        "dim": str(dim),
        "metric": METRIC,
        "index": index,
        "store_id": store_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    def create() -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", meta_rows.items()
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    retry_busy(create, path=db, what="creating it")
    return read_meta(conn, db)
