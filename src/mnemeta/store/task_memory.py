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
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import numpy as np
import safetensors.torch
import torch
from safetensors.torch import load as tensors_from_safetensors_bytes
from torch import Tensor

from mnemeta.errors import MnemetaError
from mnemeta.io import fsync_dir, fsync_file
from mnemeta.store import index as index_mod
from mnemeta.store.index import KINDS, IndexFileError, VectorIndex
from mnemeta.store.schema import (
    DB,
    INDEX,
    MARKER,
    TENSORS,
    connect,
    create_schema,
    may_create_in,
    read_marker,
    read_meta,
    retry_busy,
    write_marker,
)

# Persist the index once the records it lacks on disk reach max(PERSIST_MIN, records it has):
# recovery after a crash re-adds at most that many rows from SQLite, and a bulk load writes the
# index file O(log N) times, about twice its final size in all (a fixed "every N adds" would
# rewrite a 1 GB flat index a hundred times during a million-record load).
PERSIST_MIN = 50_000
STALE_TMP_S = 600.0  # compact() removes temp files this old: no live write takes that long
TENSORS_PER_FOLDER = 10_000  # tensors/00012/ holds records 120000..129999
_PARAMS_NAME = re.compile(r"^\d{5,}/\d+-[0-9a-f]{8}\.safetensors$")
_FETCH = 65_536  # rows per fetchmany when reading embeddings back
_IN_LIMIT = 900  # ids per "WHERE id IN (...)" (SQLite's default limit is 999 parameters)
_USED_PARAMS = "SELECT params FROM tasks WHERE params NOT NULL"


@dataclass(frozen=True)
class Hit:
    """One search result, best first: record id, cosine similarity in [-1, 1], info, metrics."""

    id: int
    similarity: float
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)  # eq would compare tensors elementwise
class TaskRecord:
    """A stored task. ``embedding`` is ``(D,)`` float32 as added (not normalised); ``params`` is
    ``{}`` when none were stored; ``time`` is seconds since the epoch (UTC)."""

    id: int
    time: float
    embedding: Tensor
    info: dict[str, Any]
    metrics: dict[str, float]
    params: dict[str, Tensor]


class RecordNotFound(MnemetaError, KeyError):
    """No record with this id (a :class:`KeyError` too, for ``except KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


P = ParamSpec("P")
R = TypeVar("R")


def _locked(method: Callable[P, R]) -> Callable[P, R]:
    """Serialise calls on one handle: its SQLite connection and FAISS index are shared state."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self = args[0]
        assert isinstance(self, TaskMemory)
        with self._lock:
            if self._conn is None:
                raise MnemetaError(f"the task memory at {self.path} is closed; open it again")
            return method(*args, **kwargs)

    return wrapper


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
            raise MnemetaError(
                f"index={index!r} is unknown; choose one of {', '.join(KINDS)} "
                "(flat: exact; hnsw or ivf: approximate, for large stores)"
            )
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise MnemetaError(f"dim={dim!r} must be a positive integer (the embedding size)")
        conn, meta = self._open_or_create(dim, index, create)
        self._conn = conn
        self.dim = int(meta["dim"])
        self.kind = meta["index"]
        self.store_id = meta["store_id"]
        self.created = meta["created"]
        if dim is not None and dim != self.dim:
            self.close()
            raise MnemetaError(
                f"{self.path} holds embeddings of dim {self.dim}, not {dim}; pass dim={self.dim} "
                "(or None), or use another folder for this embedding size"
            )
        if index is not None and index != self.kind:
            self.close()
            raise MnemetaError(
                f"{self.path} was created with index={self.kind!r}, not {index!r}; open it with "
                f"index={self.kind!r} or index=None"
            )
        self._db = self.path / DB
        self._tensors = self.path / TENSORS
        self._index_path = self.path / INDEX
        self._search_config: dict[str, int] = {}
        self._added_here = False
        self._saved_ntotal = 0
        self._saved_max_id = 0
        self._saved_ok = False
        try:
            self._index = self._load_index()
            if not read_only and self._index.ntotal and (not self._saved_ok or self._persist_due()):
                self._save_index()
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
            raise MnemetaError(
                f"{p} is a file, not a task memory folder{hint}; nothing was changed. Pass the "
                f"folder that holds {MARKER}, or a new folder to create one"
            )
        marker_path = p / MARKER
        if marker_path.is_file():
            marker = read_marker(marker_path)
            db = p / DB
            if not db.is_file():
                raise MnemetaError(
                    f"{p} has a task memory marker but no {DB}: the store is damaged; restore "
                    "it from a copy made by `mnemeta memory export`"
                )
            conn = connect(db, read_only=self.read_only, create=False)
            try:
                meta = read_meta(conn, db)
                if int(meta["dim"]) != marker.get("dim") or meta["store_id"] != marker.get(
                    "store_id"
                ):
                    raise MnemetaError(
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
                raise MnemetaError(
                    f"{p} is not a mnemeta task memory (no {MARKER}) and is not empty; nothing "
                    "was changed. Pass an empty or new folder to create one, or the folder of "
                    "an existing task memory"
                )
            if self.read_only or not create:
                why = "read_only=True" if self.read_only else "create=False"
                raise MnemetaError(
                    f"no task memory at {p} ({why} does not create one); pass the folder of an "
                    "existing task memory, or open with create=True and dim=D to create it"
                )
            if dim is None:
                raise MnemetaError(
                    f"creating a task memory at {p} needs the embedding size: pass dim=D"
                )
            p.mkdir(parents=True, exist_ok=True)
            (p / TENSORS).mkdir(exist_ok=True)
            db = p / DB
            conn = connect(db, read_only=False, create=True)
            try:
                meta = create_schema(
                    conn, db, dim=dim, index=index or "flat", store_id=uuid.uuid4().hex
                )
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

    def _retry(self, fn: Callable[[], R], what: str) -> R:
        return retry_busy(fn, path=self._db, what=what)

    # ------------------------------------------------------------------ the index
    def _db_max_id(self) -> int:
        row = self._retry(
            lambda: self.conn.execute("SELECT MAX(id) FROM tasks").fetchone(), "reading"
        )
        return int(row[0] or 0)

    def _rows_after(self, after: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids ``(N,)`` and raw embeddings ``(N, D)`` of the committed rows with id > ``after``."""

        def read() -> tuple[list[int], list[bytes]]:
            ids: list[int] = []
            blobs: list[bytes] = []
            # One statement = one read snapshot: a consistent set of rows.
            cur = self.conn.execute(
                "SELECT id, embedding FROM tasks WHERE id > ? ORDER BY id", (after,)
            )
            while rows := cur.fetchmany(_FETCH):
                for rid, blob in rows:
                    ids.append(rid)
                    blobs.append(blob)
            return ids, blobs

        ids, blobs = self._retry(read, "reading embeddings")
        data = b"".join(blobs)
        if len(data) != 4 * self.dim * len(ids):
            raise MnemetaError(
                f"{self._db} holds embeddings whose size is not dim {self.dim}: the store is "
                "damaged; restore it from a copy made by `mnemeta memory export`"
            )
        vecs = np.frombuffer(data, dtype="<f4").reshape(len(ids), self.dim)
        vecs = vecs.astype(np.float32, copy=False)  # a no-op on little-endian machines
        return np.asarray(ids, dtype=np.int64), vecs

    def _new_index(self, ids: np.ndarray, vecs: np.ndarray) -> VectorIndex:
        out = VectorIndex.build(self.kind, self.dim, ids, _unit(vecs))
        out.configure(**self._search_config)
        return out

    def _catch_up(self) -> None:
        """Add the committed rows that the index lacks (other processes' adds, crash leftovers)."""
        if self._db_max_id() <= self._index.max_id:
            return
        ids, vecs = self._rows_after(self._index.max_id)
        if self._index.needs_rebuild(self._index.ntotal + len(ids)):
            if self._index.ntotal:
                ids, vecs = self._rows_after(0)
            self._index = self._new_index(ids, vecs)
        else:
            self._index.add(ids, _unit(vecs))

    def _load_index(self) -> VectorIndex:
        """The saved index if it matches the records, else an empty one; then caught up."""
        try:
            loaded, header = index_mod.load(self._index_path, kind=self.kind, dim=self.dim)
            self._check_saved(loaded, header)
        except IndexFileError as e:
            if self._index_path.exists():
                warnings.warn(
                    f"{self._index_path}: {e}; rebuilding the index from {self._db}",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._index = VectorIndex(self.kind, self.dim)
        else:
            self._index = loaded
            self._saved_ok = True
            self._saved_ntotal = loaded.ntotal
            self._saved_max_id = loaded.max_id
        self._catch_up()
        return self._index

    def _check_saved(self, saved: VectorIndex, header: dict[str, Any]) -> None:
        if header.get("store_id") != self.store_id:
            raise IndexFileError("the saved index belongs to another store")
        if saved.max_id == 0:
            return
        row = self._retry(
            lambda: self.conn.execute(
                "SELECT embedding FROM tasks WHERE id = ?", (saved.max_id,)
            ).fetchone(),
            "checking the index",
        )
        if row is None:
            raise IndexFileError(f"the saved index covers record {saved.max_id}, which is absent")
        if zlib.crc32(row[0]) != header.get("max_id_embedding_crc32"):
            # E.g. tasks.sqlite restored from an older copy, then new records added.
            raise IndexFileError(
                f"record {saved.max_id} is not the one the saved index was built from"
            )

        def count() -> int:
            # Rows with id <= max_id. COUNT(*) reads the small time index; the rows above
            # max_id are few. One read transaction: both counts see the same snapshot.
            conn = self.conn
            conn.execute("BEGIN")
            try:
                total = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
                newer = conn.execute(
                    "SELECT COUNT(*) FROM tasks WHERE id > ?", (saved.max_id,)
                ).fetchone()[0]
            finally:
                conn.execute("COMMIT")
            return int(total) - int(newer)

        if self._retry(count, "checking the index") != saved.ntotal:
            raise IndexFileError("the saved index holds another number of records than the store")

    def _persist_due(self) -> bool:
        unsaved = self._index.ntotal - self._saved_ntotal
        return unsaved >= max(PERSIST_MIN, self._saved_ntotal)

    def _write_index(self, path: Path) -> None:
        index = self._index
        row = self._retry(
            lambda: self.conn.execute(
                "SELECT embedding FROM tasks WHERE id = ?", (index.max_id,)
            ).fetchone(),
            "saving the index",
        )
        crc = zlib.crc32(row[0]) if row is not None else None
        index.save(path, {"store_id": self.store_id, "max_id_embedding_crc32": crc})

    def _save_index(self) -> None:
        """Write the index unless the file on disk (maybe another process's) covers as much."""
        if self.read_only or self._index.max_id <= self._saved_max_id:
            return
        # Trust the header on disk only if the file we loaded was whole: a damaged payload can
        # sit behind an intact header.
        try:
            if not self._saved_ok:
                raise IndexFileError("the saved index was unusable")
            header = index_mod.read_header(self._index_path)
            if (
                header.get("store_id") == self.store_id
                and int(header.get("max_id", 0)) >= self._index.max_id
            ):
                # Another process saved one covering as much (ours is a prefix of it): keep it.
                self._saved_ntotal = self._index.ntotal
                self._saved_max_id = self._index.max_id
                return
        except (IndexFileError, ValueError, TypeError):
            pass
        self._write_index(self._index_path)
        self._saved_ok = True
        self._saved_ntotal = self._index.ntotal
        self._saved_max_id = self._index.max_id

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
            raise MnemetaError(self._shape_error("embedding", embedding, f"({self.dim},)"))
        return self.add_many(embedding[None], [params], [info], [metrics])[0]

    @_locked
    def add_many(
        self,
        embeddings: Tensor,
        params: Sequence[dict[str, Tensor] | None] | None = None,
        infos: Sequence[dict[str, Any] | None] | None = None,
        metrics: Sequence[dict[str, float] | None] | None = None,
    ) -> list[int]:
        """Store ``N`` tasks in one transaction (the fast path); returns their ids, ascending.

        ``embeddings``: ``(N, D)``; ``params``, ``infos``, ``metrics``: ``None`` or one entry per
        row (each entry may be ``None``).
        """
        if self.read_only:
            raise MnemetaError(
                f"the task memory at {self.path} was opened read_only; open it with "
                "read_only=False to add"
            )
        vecs = self._matrix(embeddings, "embeddings")
        n = len(vecs)
        params_l = _per_row(params, n, "params")
        infos_l = _per_row(infos, n, "infos")
        metrics_l = _per_row(metrics, n, "metrics")
        info_json = [_info_json(x) for x in infos_l]
        metric_json = [_metrics_json(x) for x in metrics_l]
        tensors = [_params_bytes(x) for x in params_l]  # serialised before taking the lock
        blobs = [row.astype("<f4").tobytes() for row in vecs]
        now = time.time()

        def transaction() -> tuple[int, list[int]]:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            written: list[Path] = []
            try:
                prev_max = int(conn.execute("SELECT MAX(id) FROM tasks").fetchone()[0] or 0)
                seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='tasks'").fetchone()
                base = max(prev_max, int(seq[0]) if seq else 0)
                ids = list(range(base + 1, base + 1 + n))
                rels = self._write_tensors(ids, tensors, written)
                conn.executemany(
                    "INSERT INTO tasks(id, time, embedding, info, metrics, params) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    zip(ids, [now] * n, blobs, info_json, metric_json, rels, strict=True),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            return prev_max, ids

        prev_max, ids = self._retry(transaction, "adding records")
        self._added_here = True
        if prev_max == self._index.max_id and not self._index.needs_rebuild(self._index.ntotal + n):
            # The index held every row before ours: add ours from memory.
            self._index.add(np.asarray(ids, dtype=np.int64), _unit(vecs))
        else:  # another process committed in between, or IVF wants (re)training
            self._catch_up()
        if self._persist_due():
            self._save_index()
        return ids

    def _write_tensors(
        self, ids: list[int], tensors: list[bytes | None], written: list[Path]
    ) -> list[str | None]:
        """Write each record's safetensors file and fsync it and its folder; return the names."""
        rels: list[str | None] = []
        folders: set[Path] = set()
        for rid, data in zip(ids, tensors, strict=True):
            if data is None:
                rels.append(None)
                continue
            rel = f"{rid // TENSORS_PER_FOLDER:05d}/{rid}-{secrets.token_hex(4)}.safetensors"
            path = self._tensors / rel
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                folders.add(path.parent.parent)  # the new folder's own entry
            with open(path, "xb") as f:
                written.append(path)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            folders.add(path.parent)
            rels.append(rel)
        for folder in folders:
            fsync_dir(folder)
        return rels

    # ------------------------------------------------------------------ searching
    def search(self, query: Tensor, k: int = 5) -> list[Hit]:
        """The ``k`` stored tasks most similar to ``query`` ``(D,)``, best first."""
        if not isinstance(query, Tensor) or tuple(query.shape) != (self.dim,):
            raise MnemetaError(self._shape_error("query", query, f"({self.dim},)"))
        return self.search_many(query[None], k)[0]

    @_locked
    def search_many(self, queries: Tensor, k: int = 5) -> list[list[Hit]]:
        """For each row of ``queries`` ``(Q, D)``, the ``k`` most similar tasks, best first."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise MnemetaError(f"k={k!r} must be a positive integer")
        qs = self._matrix(queries, "queries")
        self._catch_up()
        if self._index.ntotal == 0:
            return [[] for _ in range(len(qs))]
        sims, ids = self._index.search(_unit(qs), min(k, self._index.ntotal))
        rows = self._info_rows({int(i) for i in ids.ravel() if i >= 0})
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

    def _info_rows(self, ids: set[int]) -> dict[int, tuple[dict[str, Any], dict[str, float]]]:
        wanted = sorted(ids)
        out: dict[int, tuple[dict[str, Any], dict[str, float]]] = {}
        for start in range(0, len(wanted), _IN_LIMIT):
            chunk = wanted[start : start + _IN_LIMIT]

            def read(chunk: list[int] = chunk) -> list[Any]:
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id, info, metrics FROM tasks WHERE id IN ({marks})"
                return self.conn.execute(sql, chunk).fetchall()

            for rid, info, metrics in self._retry(read, "reading records"):
                out[int(rid)] = (json.loads(info), json.loads(metrics))
        missing = ids - out.keys()
        if missing:  # the index only ever holds committed ids, and rows are never deleted
            raise RuntimeError(f"index returned ids absent from {self._db}: {sorted(missing)[:5]}")
        return out

    def configure_search(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Speed/recall knobs of this handle (not saved): HNSW ``efSearch`` (default
        128), IVF ``nprobe`` (default 8). Larger = better recall, slower search."""
        for name, value in (("ef_search", ef_search), ("nprobe", nprobe)):
            if value is not None:
                if not isinstance(value, int) or value < 1:
                    raise MnemetaError(f"{name}={value!r} must be a positive integer")
                self._search_config[name] = value
        with self._lock:
            self._index.configure(**self._search_config)

    # ------------------------------------------------------------------ reading records
    @_locked
    def get(self, id: int) -> TaskRecord:
        """The record ``id``, with its parameters loaded (``{}`` if none)."""
        row = self._retry(
            lambda: self.conn.execute(
                "SELECT id, time, embedding, info, metrics, params FROM tasks WHERE id = ?",
                (int(id),),
            ).fetchone(),
            "reading a record",
        )
        if row is None:
            raise self._not_found(id)
        rid, t, blob, info, metrics, rel = row
        embedding = torch.from_numpy(np.frombuffer(blob, dtype="<f4").astype(np.float32))
        params = self._load_params(rid, rel)
        return TaskRecord(
            int(rid), float(t), embedding, json.loads(info), json.loads(metrics), params
        )

    @_locked
    def params(self, id: int) -> dict[str, Tensor]:
        """The stored parameters of record ``id`` (``{}`` if none)."""
        row = self._retry(
            lambda: self.conn.execute(
                "SELECT params FROM tasks WHERE id = ?", (int(id),)
            ).fetchone(),
            "reading a record",
        )
        if row is None:
            raise self._not_found(id)
        return self._load_params(int(id), row[0])

    def _not_found(self, rid: Any) -> RecordNotFound:
        return RecordNotFound(
            f"no record {rid} in the task memory at {self.path} (ids run from 1 to "
            f"{self._db_max_id()}); pass an id returned by add() or search()"
        )

    def _load_params(self, rid: int, rel: str | None) -> dict[str, Tensor]:
        if rel is None:
            return {}
        if not _PARAMS_NAME.match(rel):
            raise MnemetaError(
                f"record {rid} in {self._db} names an invalid tensor file {rel!r}: the store "
                "is damaged; restore it from a copy made by `mnemeta memory export`"
            )
        path = self._tensors / rel
        try:
            data = path.read_bytes()
            # safetensors parses a header and raw tensor bytes: no pickle, no code.
            return tensors_from_safetensors_bytes(data)
        except Exception as e:  # missing file, or safetensors' own error for damaged bytes
            raise MnemetaError(
                f"the parameters of record {rid} ({path}) are missing or damaged "
                f"({type(e).__name__}: {e}); restore the store from a copy made by "
                "`mnemeta memory export`"
            ) from None

    @_locked
    def __len__(self) -> int:
        self._catch_up()
        return self._index.ntotal

    @_locked
    def ids(self) -> list[int]:
        """All record ids, ascending."""
        rows = self._retry(
            lambda: self.conn.execute("SELECT id FROM tasks ORDER BY id").fetchall(), "reading"
        )
        return [int(r[0]) for r in rows]

    # ------------------------------------------------------------------ housekeeping
    @_locked
    def info(self) -> dict[str, Any]:
        """Count, dim, index kind and state, bytes on disk, path."""
        self._catch_up()
        index: dict[str, Any] = {"kind": self.kind, "records": self._index.ntotal}
        index["max_id"] = self._index.max_id
        if self.kind == "hnsw":
            index |= {"M": index_mod.HNSW_M, "ef_search": self._index.ef_search}
        if self.kind == "ivf":
            trained = self._index.trained_n > 0
            index["trained_on"] = self._index.trained_n
            if trained:
                index["nlist"] = index_mod.ivf_nlist(self._index.trained_n)
                index["nprobe"] = self._index.nprobe
            else:
                index["note"] = f"exact until {index_mod.IVF_MIN_TRAIN} records"
        return {
            "path": str(self.path),
            "count": self._index.ntotal,
            "dim": self.dim,
            "metric": "cosine",
            "index": self.kind,
            "index_state": index,
            "disk_bytes": _disk_bytes(self.path),
            "store_id": self.store_id,
            "created": self.created,
            "read_only": self.read_only,
        }

    @_locked
    def flush(self) -> None:
        """Save the index (if it covers more than the saved one). Records are durable at add."""
        if self.read_only:
            return
        self._catch_up()
        self._save_index()

    @_locked
    def export(self, dest: str | os.PathLike[str]) -> dict[str, Any]:
        """Write a consistent copy of the store to the new folder ``dest``; returns a summary.

        The records are one snapshot (SQLite's backup API), with the tensor files they name and
        an index covering a prefix of them (the copy catches up the rest when opened). Built in
        a temporary folder beside ``dest`` and renamed into place: ``dest`` appears whole or not
        at all.
        """
        out = Path(dest)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise MnemetaError(f"{out} exists and is not empty; export into a new folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.export-{secrets.token_hex(4)}.tmp"
        tmp.mkdir()
        try:
            self._catch_up()
            (tmp / TENSORS).mkdir()
            if self._index.ntotal:  # before the snapshot: it covers a prefix of the snapshot
                self._write_index(tmp / INDEX)
            copy = sqlite3.connect(tmp / DB, isolation_level=None)
            try:
                self._retry(lambda: self.conn.backup(copy), "copying records")
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
                shutil.copyfile(self._tensors / rel, target)
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
        return {"path": str(out), "count": count, "disk_bytes": _disk_bytes(out)}

    @_locked
    def compact(self) -> dict[str, Any]:
        """Remove orphan tensor files and stale temp files, VACUUM, rebuild and save the index.

        Safe while other processes use the store: orphans are found under the write lock, when
        no add is between writing its file and committing its row. The rebuild retrains IVF
        cells for the current size; for HNSW it costs as much as adding every record again.
        """
        if self.read_only:
            raise MnemetaError(
                f"the task memory at {self.path} was opened read_only; cannot compact"
            )
        before = _disk_bytes(self.path)

        def drop_orphans() -> int:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                used = {r[0] for r in conn.execute(_USED_PARAMS)}
                removed = 0
                for folder in sorted(self._tensors.iterdir()) if self._tensors.is_dir() else []:
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

        removed = self._retry(drop_orphans, "removing orphan files")
        # Temp files of index or marker writes that a killed process left behind; a live
        # writer's temp file is seconds old.
        now = time.time()
        for entry in self.path.iterdir():
            temp = entry.name.startswith(".") and entry.name.endswith(".tmp")
            if temp and entry.is_file() and now - entry.stat().st_mtime > STALE_TMP_S:
                entry.unlink(missing_ok=True)
                removed += 1
        self._retry(lambda: self.conn.execute("VACUUM"), "vacuuming")
        self._retry(lambda: self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"), "checkpointing")
        # A fresh index: IVF cells retrained for the current size, HNSW without stale links.
        ids, vecs = self._rows_after(0)
        self._index = self._new_index(ids, vecs)
        self._saved_max_id = 0
        if self._index.ntotal:
            self._write_index(self._index_path)
            self._saved_ok = True
            self._saved_ntotal = self._index.ntotal
            self._saved_max_id = self._index.max_id
        else:
            self._index_path.unlink(missing_ok=True)
        return {
            "path": str(self.path),
            "count": self._index.ntotal,
            "removed_files": removed,
            "bytes_before": before,
            "bytes_after": _disk_bytes(self.path),
        }

    def close(self) -> None:
        """Save the index if this handle added records (or the saved one was unusable), close."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                index = getattr(self, "_index", None)
                if (
                    index is not None
                    and not self.read_only
                    and index.max_id > self._saved_max_id
                    and (self._added_here or not self._saved_ok or self._persist_due())
                ):
                    self._conn = conn
                    try:
                        self._save_index()
                    finally:
                        self._conn = None
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

    # ------------------------------------------------------------------ input checks
    def _shape_error(self, what: str, x: Any, want: str) -> str:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        return (
            f"{what} must be a tensor of shape {want}, got {got}; this task memory "
            f"({self.path}) holds embeddings of dim {self.dim}"
        )

    def _matrix(self, x: Any, what: str) -> np.ndarray:
        """``x`` as float32 ``(N, D)`` numpy, after checking shape, finiteness and norm."""
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise MnemetaError(self._shape_error(what, x, f"(N, {self.dim})"))
        arr = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        if not np.isfinite(arr).all():
            raise MnemetaError(f"{what} holds NaN or infinite values; pass finite embeddings")
        if (np.abs(arr).max(axis=1) == 0).any():
            raise MnemetaError(
                f"{what} holds an all-zero vector, which has no direction (cosine similarity is "
                "undefined); pass non-zero embeddings"
            )
        return arr


# ---------------------------------------------------------------------- helpers
def _unit(vecs: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return np.ascontiguousarray(vecs / np.maximum(norms, np.finfo(np.float32).tiny), np.float32)


def _per_row(values: Sequence[Any] | None, n: int, name: str) -> list[Any]:
    if values is None:
        return [None] * n
    if isinstance(values, dict) or len(values) != n:
        got = "a dict" if isinstance(values, dict) else f"{len(values)} entries"
        raise MnemetaError(f"{name} must be a list with one entry per embedding ({n}); got {got}")
    return list(values)


def _info_json(info: Any) -> str:
    if info is None:
        return "{}"
    if not isinstance(info, dict):
        raise MnemetaError(f"info must be a dict of JSON values, got {type(info).__name__}")
    try:
        return json.dumps(info, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise MnemetaError(f"info is not JSON-serialisable ({e}); pass plain values") from None


def _metrics_json(metrics: Any) -> str:
    if metrics is None:
        return "{}"
    if not isinstance(metrics, dict):
        raise MnemetaError(f"metrics must be a dict of str -> float, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or isinstance(value, bool):
            raise MnemetaError(f"metrics must map str to numbers; got {key!r}: {value!r}")
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise MnemetaError(f"metrics must map str to numbers; got {key!r}: {value!r}") from None
    # NaN and infinities (a diverged loss) are kept: Python's json round-trips them.
    return json.dumps(out)


def _params_bytes(params: Any) -> bytes | None:
    if params is None or (isinstance(params, dict) and not params):
        return None
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in params.items()
    ):
        raise MnemetaError("params must be a dict of str -> torch.Tensor (or None)")
    # clone(): safetensors refuses tensors that share memory (e.g. views of one flat buffer).
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in params.items()}
    try:
        return safetensors.torch.save(cpu, metadata={"format": "mnemeta-task-params"})
    except Exception as e:  # safetensors' error type for unsupported tensors (sparse, ...)
        raise MnemetaError(f"params cannot be stored as safetensors ({e})") from None


def _walk(folder: Path) -> Iterator[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(Path(entry.path))
            else:
                yield entry


def _disk_bytes(folder: Path) -> int:
    total = 0
    for entry in _walk(folder):
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:  # removed meanwhile (a temp file renamed, an orphan dropped)
            continue
    return total
