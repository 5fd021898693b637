"""TaskMemory: a persistent, searchable store of past tasks, safe to share between processes.

One record per task: an id, the time it was added, the task embedding (float32 ``(D,)``), the
adapted parameters (any dict of tensors, e.g. the head or the layers Meta-SGD adapts; stored as
safetensors), metrics (e.g. loss before and after adaptation) and free JSON ``info``.

Where things live (see :mod:`mnemeta.store.schema` for the folder layout):

- **SQLite (WAL) is the source of truth.** A record exists when its row has committed. The raw
  embedding is in the row, so everything else can be rebuilt from tasks.sqlite alone.
- **Tensors** go to ``tensors/…/ID-TOKEN.safetensors``, written and fsynced *inside* the write
  transaction, before the row commits: a row never points at a missing or partial file. A crash
  between the file and the commit leaves an orphan file, which :meth:`TaskMemory.compact`
  removes; compact takes the same write lock, so it cannot mistake a file still being committed
  for an orphan. (The unique name makes a temp-file-plus-rename unnecessary: no reader knows the
  name before the row commits.)
- **The FAISS index is a cache** of the embeddings, covering exactly the committed rows with
  ``id <= max_id``. Ids grow with commit order (writes are serialised by ``BEGIN IMMEDIATE``), so
  before each search the handle adds the rows with ``id > max_id`` (records from other processes,
  or rows that committed before a crash) and is exact again. A saved index that is damaged, of
  another store, or that covers records which do not exist is dropped and rebuilt from SQLite.

Durability: ``synchronous=NORMAL`` in WAL mode. A committed record survives the writer being
killed (kill -9: the WAL is in the OS page cache); an OS crash or power cut may lose the last
commits but never corrupts the database. ``FULL`` would fsync the WAL at every commit: 5.5 ms per
commit against 0.04 ms on the CI disk, capping single adds at ~180/s. Tensor files are fsynced
(with their folder) before their row commits, so even after a power cut a surviving row's file
is whole.

Nothing is unpickled: rows are SQL values and JSON, tensors are safetensors, the index is FAISS's
own binary format behind a checksum.

Damage: every open runs SQLite's ``PRAGMA quick_check`` (every page's structure) and
:meth:`TaskMemory.compact` runs ``PRAGMA integrity_check`` (also every index entry against its
row) before it removes anything; a damaged tasks.sqlite is refused with
:class:`~mnemeta.store.StoreDamaged`, which names the file and says what SQLite found, and the
files are left as they were. A broken page can otherwise hide until a query reaches it, and the
store would look healthy meanwhile. Any other SQLite error of a public method is a
:class:`~mnemeta.errors.StoreError` that names tasks.sqlite too. What is still readable of a
damaged store is copied out by :func:`mnemeta.store.salvage` (``mnemeta memory export``).
The quick_check reads the whole file once: with the file in the page cache, 0.5 ms for 5,000
records of dim 32 (1 MB) and 2-4 ms for dim 256 (7 MB), about as long again as the rest of the
open; it grows with the file (0.12 s for 100,000 × 256, 139 MB), as does reading index.faiss.

Where the code is, one concern per module: :mod:`~mnemeta.store.records` (rows, tensor files,
the add transaction, input checks), :mod:`~mnemeta.store.index_cache` (when the saved index is
trusted, caught up, saved or rebuilt), :mod:`~mnemeta.store.maintenance` (export, compact),
:mod:`~mnemeta.store.salvage` (copying the readable records out of a damaged store),
:mod:`~mnemeta.store.schema` (folder layout, SQLite schema, opening, health checks) and
:mod:`~mnemeta.store.index` (the FAISS indexes and their file format). This module is the
handle that puts them together.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor

from mnemeta.errors import ConfigError, StoreError
from mnemeta.store import maintenance
from mnemeta.store.index import KINDS
from mnemeta.store.index_cache import IndexCache
from mnemeta.store.records import Hit, RecordNotFound, Records, TaskRecord
from mnemeta.store.schema import (
    DB,
    INDEX,
    MARKER,
    TENSORS,
    check_health,
    connect,
    create_schema,
    may_create_in,
    read_marker,
    read_meta,
    retry_busy,
    sqlite_errors,
    write_marker,
)

__all__ = ["Hit", "RecordNotFound", "TaskMemory", "TaskRecord"]

P = ParamSpec("P")
R = TypeVar("R")


def _locked(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Serialise calls on one handle: its SQLite connection and FAISS index are shared state.

    And turn any SQLite error of the call into a :class:`StoreError` naming tasks.sqlite and
    ``what`` the call was doing (a damaged file says so and how to get out).
    """

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            self = args[0]
            assert isinstance(self, TaskMemory)
            with self._lock:
                if self._conn is None:
                    raise StoreError(f"the task memory at {self.path} is closed; open it again")
                with sqlite_errors(self.path / DB, what, self._conn):
                    return method(*args, **kwargs)

        return wrapper

    return decorate


class TaskMemory:
    """A folder of past tasks: records in SQLite, tensors as safetensors, a FAISS index.

    Args:
        path: the folder. Created (with ``dim``) if it does not exist or is empty.
        dim: embedding size; required to create a store, checked when opening one.
        index: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"`` (approximate, for large stores). When
            creating, ``None`` means ``"flat"``; when opening, ``None`` means the store's own
            kind, and another kind is an error.
        create: create the store if ``path`` holds none.
        read_only: open without writing anything (the index is caught up in memory only).

    Several processes may open one store and add at once; one handle is for one process
    (calls on it are serialised by a lock). Use as a context manager, or call :meth:`close`.

    Opening checks tasks.sqlite (``PRAGMA quick_check``) and raises
    :class:`~mnemeta.store.StoreDamaged` if it is damaged. A writable open also removes the
    temp files that killed writes left in the folder, once they are older than
    :data:`~mnemeta.store.maintenance.STALE_TMP_S` (younger ones may be another process's
    write in progress).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        dim: int | None = None,
        index: str | None = None,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        if index is not None and index not in KINDS:
            raise ConfigError(
                f"index={index!r} is unknown; choose one of {', '.join(KINDS)} "
                "(flat: exact; hnsw or ivf: approximate, for large stores)"
            )
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ConfigError(f"dim={dim!r} must be a positive integer (the embedding size)")
        with sqlite_errors(self.path / DB, "opening it"):
            conn, meta = self._open_or_create(dim, index, create)
        self._conn = conn
        self.dim = int(meta["dim"])
        self.kind = meta["index"]
        self.store_id = meta["store_id"]
        self.created = meta["created"]
        if dim is not None and dim != self.dim:
            self.close()
            raise StoreError(
                f"{self.path} holds embeddings of dim {self.dim}, not {dim}; pass dim={self.dim} "
                "(or None), or use another folder for this embedding size"
            )
        if index is not None and index != self.kind:
            self.close()
            raise StoreError(
                f"{self.path} was created with index={self.kind!r}, not {index!r}; open it with "
                f"index={self.kind!r} or index=None"
            )
        self._records = Records(conn, path=self.path, dim=self.dim)
        try:
            with sqlite_errors(self.path / DB, "opening it", conn):
                self._cache = IndexCache(
                    self._records,
                    kind=self.kind,
                    dim=self.dim,
                    store_id=self.store_id,
                    path=self.path / INDEX,
                    read_only=read_only,
                )
                self._cache.save_after_open()
            if not read_only:
                maintenance.remove_stale_temps(self.path)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening
    def _open_or_create(
        self, dim: int | None, index: str | None, create: bool
    ) -> tuple[sqlite3.Connection, dict[str, str]]:
        p = self.path
        if p.exists() and not p.is_dir():
            hint = f" (its folder {p.parent} may be the store)" if p.name == DB else ""
            raise StoreError(
                f"{p} is a file, not a task memory folder{hint}; nothing was changed. Pass the "
                f"folder that holds {MARKER}, or a new folder to create one"
            )
        marker_path = p / MARKER
        if marker_path.is_file():
            marker = read_marker(marker_path)
            db = p / DB
            if not db.is_file():
                raise StoreError(
                    f"{p} has a task memory marker but no {DB}: the store is damaged; restore "
                    "it from a copy made by `mnemeta memory export`"
                )
            conn = connect(db, read_only=self.read_only, create=False)
            try:
                meta = read_meta(conn, db, marked=True)
                # Every open: a damaged file must not pass for a healthy store (a broken page
                # can hide until a query reaches it). Cheap: see the class docstring.
                check_health(conn, db, full=False, unchanged=True)
                if int(meta["dim"]) != marker.get("dim") or meta["store_id"] != marker.get(
                    "store_id"
                ):
                    raise StoreError(
                        f"{marker_path} and {db} describe different stores (dim or store id); "
                        "nothing was changed. Restore the folder from a copy made by "
                        "`mnemeta memory export`"
                    )
                if not self.read_only:
                    retry_busy(
                        lambda: conn.execute("PRAGMA journal_mode=WAL"), path=db, what="opening it"
                    )
            except BaseException:
                conn.close()
                raise
        else:
            if p.exists() and not may_create_in(p):
                raise StoreError(
                    f"{p} is not a mnemeta task memory (no {MARKER}) and is not empty; nothing "
                    "was changed. Pass an empty or new folder to create one, or the folder of "
                    "an existing task memory"
                )
            if self.read_only or not create:
                why = "read_only=True" if self.read_only else "create=False"
                raise StoreError(
                    f"no task memory at {p} ({why} does not create one); pass the folder of an "
                    "existing task memory, or open with create=True and dim=D to create it"
                )
            if dim is None:
                raise ConfigError(
                    f"creating a task memory at {p} needs the embedding size: pass dim=D"
                )
            p.mkdir(parents=True, exist_ok=True)
            db = p / DB
            conn = connect(db, read_only=False, create=True)
            try:
                meta = create_schema(
                    conn, db, dim=dim, index=index or "flat", store_id=uuid.uuid4().hex
                )
                # Only once tasks.sqlite is ours: a refused folder is left as it was.
                (p / TENSORS).mkdir(exist_ok=True)
                # Written last: a folder with a marker is a whole store.
                write_marker(p, meta)
            except BaseException:
                conn.close()
                raise
        if not self.read_only:
            # Per connection, not stored in the file: see the module docstring for why NORMAL.
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn, meta

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    # ------------------------------------------------------------------ adding
    def add(
        self,
        embedding: Tensor,
        params: dict[str, Tensor] | None = None,
        info: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> int:
        """Store one task; returns its id. ``embedding``: ``(D,)``."""
        if not isinstance(embedding, Tensor) or tuple(embedding.shape) != (self.dim,):
            raise StoreError(self._records.shape_error("embedding", embedding, f"({self.dim},)"))
        return self.add_many(embedding[None], [params], [info], [metrics])[0]

    @_locked("adding records")
    def add_many(
        self,
        embeddings: Tensor,
        params: Sequence[dict[str, Tensor] | None] | None = None,
        infos: Sequence[dict[str, Any] | None] | None = None,
        metrics: Sequence[dict[str, float] | None] | None = None,
        *,
        state: tuple[str, Callable[[Any, list[int]], Any]] | None = None,
    ) -> list[int]:
        """Store ``N`` tasks in one transaction (the fast path); returns their ids, ascending.

        ``embeddings``: ``(N, D)``; ``params``, ``infos``, ``metrics``: ``None`` or one entry per
        row (each entry may be ``None``). ``state``: ``(key, fn)`` to update the application
        state ``key`` in the same transaction, ``fn(current value or None, new ids) -> new
        value`` (JSON): the rows and the state commit together or not at all.
        """
        if self.read_only:
            raise StoreError(
                f"the task memory at {self.path} was opened read_only; open it with "
                "read_only=False to add"
            )
        vecs = self._records.matrix(embeddings, "embeddings")
        prev_max, ids = self._records.insert(vecs, params, infos, metrics, state)
        self._cache.added(prev_max, ids, vecs)
        return ids

    # ------------------------------------------------------------------ searching
    def search(self, query: Tensor, k: int = 5) -> list[Hit]:
        """The ``k`` stored tasks most similar to ``query`` ``(D,)``, best first."""
        if not isinstance(query, Tensor) or tuple(query.shape) != (self.dim,):
            raise StoreError(self._records.shape_error("query", query, f"({self.dim},)"))
        return self.search_many(query[None], k)[0]

    @_locked("searching")
    def search_many(self, queries: Tensor, k: int = 5) -> list[list[Hit]]:
        """For each row of ``queries`` ``(Q, D)``, the ``k`` most similar tasks, best first."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k={k!r} must be a positive integer")
        qs = self._records.matrix(queries, "queries")
        cache = self._cache
        cache.catch_up()
        if cache.index.ntotal == 0:
            return [[] for _ in range(len(qs))]
        sims, ids = cache.search(qs, min(k, cache.index.ntotal))
        rows = self._records.info_rows({int(i) for i in ids.ravel() if i >= 0})
        out: list[list[Hit]] = []
        for sim_row, id_row in zip(sims, ids, strict=True):
            hits = []
            for s, i in zip(sim_row, id_row, strict=True):
                if i < 0:
                    continue
                info, metrics = rows[int(i)]
                # Inner products of unit float32 vectors can overshoot ±1 by rounding.
                hits.append(Hit(int(i), min(1.0, max(-1.0, float(s))), info, metrics))
            out.append(hits)
        return out

    def configure_search(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Speed/recall knobs of this handle (not saved): HNSW ``efSearch`` (default
        128), IVF ``nprobe`` (default 8). Larger = better recall, slower search."""
        for name, value in (("ef_search", ef_search), ("nprobe", nprobe)):
            if value is not None:
                if not isinstance(value, int) or value < 1:
                    raise ConfigError(f"{name}={value!r} must be a positive integer")
                self._cache.search_config[name] = value
        with self._lock:
            self._cache.index.configure(**self._cache.search_config)

    # ------------------------------------------------------------------ reading records
    @_locked("reading a record")
    def get(self, id: int) -> TaskRecord:
        """The record ``id``, with its parameters loaded (``{}`` if none)."""
        return self._records.get(id)

    @_locked("reading a record")
    def params(self, id: int) -> dict[str, Tensor]:
        """The stored parameters of record ``id`` (``{}`` if none)."""
        return self._records.params(id)

    @_locked("counting records")
    def __len__(self) -> int:
        self._cache.catch_up()
        return self._cache.index.ntotal

    @_locked("reading record ids")
    def ids(self) -> list[int]:
        """All record ids, ascending."""
        return self._records.ids()

    @_locked("reading records")
    def records_after(self, after: int = 0) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
        """The records with id > ``after``, ascending: ids ``(N,)`` int64, embeddings ``(N, D)``
        float32 as added, and their infos. One read snapshot; for a reader that follows the
        store incrementally (pass the largest id it has seen)."""
        ids, vecs, infos = self._records.records_after(int(after))
        return torch.from_numpy(ids), torch.from_numpy(vecs), infos

    @_locked("reading its version")
    def data_version(self) -> int:
        """A number that changes when another connection commits to tasks.sqlite (SQLite's
        ``PRAGMA data_version``; this handle's own commits leave it): a reader that follows
        the store checks it before reading anything else."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # ------------------------------------------------------------------ application state
    @_locked("reading its application state")
    def app_state(self, key: str) -> Any:
        """The JSON value an application built on the store keeps under ``key`` (None if none).

        Kept in tasks.sqlite's meta table beside the store's own facts, so that it is exported,
        salvaged and made durable with the records it describes.
        """
        return self._records.app_state(key)

    @_locked("writing its application state")
    def update_app_state(self, key: str, fn: Callable[[Any], Any]) -> Any:
        """Replace the value under ``key`` by ``fn(current value or None)`` in one write
        transaction (read-modify-write, safe against other processes); returns the new value."""
        if self.read_only:
            raise StoreError(
                f"the task memory at {self.path} was opened read_only; open it with "
                "read_only=False to change it"
            )
        return self._records.update_app_state((key, fn))

    # ------------------------------------------------------------------ housekeeping
    @_locked("reading its state")
    def info(self) -> dict[str, Any]:
        """Count, dim, index kind and state, bytes on disk, path."""
        self._cache.catch_up()
        return {
            "path": str(self.path),
            "count": self._cache.index.ntotal,
            "dim": self.dim,
            "metric": "cosine",
            "index": self.kind,
            "index_state": self._cache.state(),
            "disk_bytes": maintenance.disk_bytes(self.path),
            "store_id": self.store_id,
            "created": self.created,
            "read_only": self.read_only,
        }

    @_locked("saving the index")
    def flush(self) -> None:
        """Save the index (if it covers more than the saved one). Records are durable at add."""
        if self.read_only:
            return
        self._cache.catch_up()
        self._cache.save()

    @_locked("exporting it")
    def export(self, dest: str | os.PathLike[str]) -> dict[str, Any]:
        """Write a consistent copy of the store to the new folder ``dest``; returns a summary.

        The records are one snapshot (SQLite's backup API), with the tensor files they name and
        an index covering a prefix of them (the copy catches up the rest when opened). Built in
        a temporary folder beside ``dest`` and renamed into place: ``dest`` appears whole or not
        at all. ``dest`` must be outside the store. The copy must pass SQLite's
        ``integrity_check`` before it is renamed: a store whose copy fails raises
        :class:`~mnemeta.store.StoreDamaged` (copy it with :func:`mnemeta.store.salvage`).
        """
        return maintenance.export(self._records, self._cache, dest)

    @_locked("compacting it")
    def compact(self) -> dict[str, Any]:
        """Remove orphan tensor files and stale temp files, VACUUM, rebuild and save the index.

        First ``PRAGMA integrity_check``: a damaged store raises
        :class:`~mnemeta.store.StoreDamaged` with nothing removed (a damaged table could hide
        rows, whose tensor files would look like orphans). Safe while other processes use the
        store: orphans are found under the write lock, when no add is between writing its file
        and committing its row. The rebuild retrains IVF cells for the current size; for HNSW it
        costs as much as adding every record again.
        """
        if self.read_only:
            raise StoreError(f"the task memory at {self.path} was opened read_only; cannot compact")
        return maintenance.compact(self._records, self._cache)

    def close(self) -> None:
        """Save the index if this handle added records (or the saved one was unusable), close."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                cache: IndexCache | None = getattr(self, "_cache", None)
                if cache is not None and not self.read_only:
                    with sqlite_errors(self.path / DB, "saving the index on close", conn):
                        cache.save_on_close()
            finally:
                conn.close()

    def __enter__(self) -> TaskMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"dim={self.dim}, index={self.kind!r}"
        return f"TaskMemory({str(self.path)!r}, {state})"
