"""The records of a task memory: its SQLite rows and tensor files, and the add transaction.

SQLite (WAL) is the source of truth: a record exists when its row has committed, and the raw
embedding is in the row, so everything else can be rebuilt from tasks.sqlite alone. Tensors go
to ``tensors/…/ID-TOKEN.safetensors``, written and fsynced *inside* the write transaction, before
the row commits: a row never points at a missing or partial file (see
:mod:`mnemeta.store.task_memory` for the whole picture).

Also here: the checks and serialisation of what :meth:`TaskMemory.add_many` is given
(embeddings, params, infos, metrics), and the records' public types (:class:`Hit`,
:class:`TaskRecord`, :class:`RecordNotFound`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import safetensors.torch
import torch
from safetensors.torch import load as tensors_from_safetensors_bytes
from torch import Tensor

from mnemeta.errors import ConfigError, DataError, StoreError
from mnemeta.io import fsync_dir
from mnemeta.store.schema import DB, TENSORS, retry_busy

TENSORS_PER_FOLDER = 10_000  # tensors/00012/ holds records 120000..129999
PARAMS_NAME = re.compile(r"^\d{5,}/\d+-[0-9a-f]{8}\.safetensors$")
_FETCH = 65_536  # rows per fetchmany when reading embeddings back
_IN_LIMIT = 900  # ids per "WHERE id IN (...)" (SQLite's default limit is 999 parameters)
# Keys of the meta table that belong to an application built on the store (the few-shot
# classifier's class table), not to the store's identity: "app:NAME", the value JSON.
APP_PREFIX = "app:"

#: An application state update: its key and a function from the current value (None when
#: absent) to the new one, run inside the write transaction so that it reads what it replaces.
StateUpdate = tuple[str, Callable[[Any], Any]]

R = TypeVar("R")


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


class RecordNotFound(StoreError, KeyError):
    """No record with this id (a :class:`KeyError` too, for ``except KeyError``).

    ``id`` is the id asked for and ``max_id`` the largest in the store (``None`` when raised
    without them), so that a caller such as the CLI can word its own message.
    """

    id: Any = None
    max_id: int | None = None

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Records:
    """The rows of ``tasks.sqlite`` and the tensor files they name, through one connection.

    Not thread-safe by itself: :class:`~mnemeta.store.TaskMemory` serialises the calls.

    Args:
        conn: an open connection in autocommit mode (:func:`mnemeta.store.schema.connect`).
        path: the store's folder.
        dim: the embedding size D.
    """

    def __init__(self, conn: sqlite3.Connection, *, path: Path, dim: int) -> None:
        self.conn = conn
        self.path = path
        self.dim = dim
        self.db = path / DB
        self.tensors = path / TENSORS

    def retry(self, fn: Callable[[], R], what: str) -> R:
        return retry_busy(fn, path=self.db, what=what)

    # ------------------------------------------------------------------ embeddings
    def max_id(self) -> int:
        row = self.retry(
            lambda: self.conn.execute("SELECT MAX(id) FROM tasks").fetchone(), "reading"
        )
        return int(row[0] or 0)

    def rows_after(self, after: int) -> tuple[np.ndarray, np.ndarray]:
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

        ids, blobs = self.retry(read, "reading embeddings")
        return np.asarray(ids, dtype=np.int64), self._vectors(blobs)

    def _vectors(self, blobs: list[bytes]) -> np.ndarray:
        """Raw embedding blobs -> float32 ``(N, D)``, after checking their size."""
        data = b"".join(blobs)
        if len(data) != 4 * self.dim * len(blobs):
            raise StoreError(
                f"{self.db} holds embeddings whose size is not dim {self.dim}: the store is "
                "damaged; restore it from a copy made by `mnemeta memory export`"
            )
        vecs = np.frombuffer(data, dtype="<f4").reshape(len(blobs), self.dim)
        return vecs.astype(np.float32, copy=False)  # a no-op on little-endian machines

    def records_after(self, after: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Ids ``(N,)``, raw embeddings ``(N, D)`` and infos of the rows with id > ``after``."""

        def read() -> tuple[list[int], list[bytes], list[str]]:
            ids: list[int] = []
            blobs: list[bytes] = []
            infos: list[str] = []
            cur = self.conn.execute(
                "SELECT id, embedding, info FROM tasks WHERE id > ? ORDER BY id", (after,)
            )
            while rows := cur.fetchmany(_FETCH):
                for rid, blob, info in rows:
                    ids.append(rid)
                    blobs.append(blob)
                    infos.append(info)
            return ids, blobs, infos

        ids, blobs, infos = self.retry(read, "reading records")
        vecs = self._vectors(blobs).copy()  # writable: the handle hands it to torch
        return np.asarray(ids, dtype=np.int64), vecs, [json.loads(i) for i in infos]

    # ------------------------------------------------------------------ application state
    def app_state(self, key: str) -> Any:
        """The JSON value an application keeps under ``key`` (None if it has none)."""
        row = self.retry(
            lambda: self.conn.execute(
                "SELECT value FROM meta WHERE key = ?", (APP_PREFIX + key,)
            ).fetchone(),
            "reading its application state",
        )
        return None if row is None else json.loads(row[0])

    def update_app_state(self, update: StateUpdate) -> Any:
        """Apply ``update`` in one write transaction; returns the new value."""

        def transaction() -> Any:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = self._apply_state(update)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return value

        return self.retry(transaction, "writing its application state")

    def _apply_state(self, update: StateUpdate) -> Any:
        """Inside a write transaction: read the value, compute the new one, write it."""
        key, fn = update
        row = self.conn.execute(
            "SELECT value FROM meta WHERE key = ?", (APP_PREFIX + key,)
        ).fetchone()
        value = fn(None if row is None else json.loads(row[0]))
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (APP_PREFIX + key, json.dumps(value, sort_keys=True)),
        )
        return value

    def embedding_blob(self, rid: int, what: str) -> bytes | None:
        """The raw embedding bytes of record ``rid``, or None if there is no such row."""
        row = self.retry(
            lambda: self.conn.execute(
                "SELECT embedding FROM tasks WHERE id = ?", (rid,)
            ).fetchone(),
            what,
        )
        return None if row is None else bytes(row[0])

    def count_through(self, max_id: int, what: str) -> int:
        """How many rows have id <= ``max_id``."""

        def count() -> int:
            # Rows with id <= max_id. COUNT(*) reads the small time index; the rows above
            # max_id are few. One read transaction: both counts see the same snapshot.
            conn = self.conn
            conn.execute("BEGIN")
            try:
                total = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
                newer = conn.execute(
                    "SELECT COUNT(*) FROM tasks WHERE id > ?", (max_id,)
                ).fetchone()[0]
            finally:
                conn.execute("COMMIT")
            return int(total) - int(newer)

        return self.retry(count, what)

    # ------------------------------------------------------------------ adding
    def insert(
        self,
        vecs: np.ndarray,
        params: Sequence[dict[str, Tensor] | None] | None,
        infos: Sequence[dict[str, Any] | None] | None,
        metrics: Sequence[dict[str, float] | None] | None,
        state: tuple[str, Callable[[Any, list[int]], Any]] | None = None,
    ) -> tuple[int, list[int]]:
        """Commit ``N`` rows in one transaction; returns the largest id before it and the new ids.

        ``vecs``: checked float32 ``(N, D)`` (from :meth:`matrix`); ``params``, ``infos``,
        ``metrics``: ``None`` or one entry per row (each entry may be ``None``). ``state``: an
        application state update committed in the same transaction (rows and state together
        or neither). Its function is given the new ids as ``fn(value, ids)``.
        """
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
                if state is not None:
                    key, fn = state
                    self._apply_state((key, lambda value: fn(value, ids)))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                for path in written:
                    path.unlink(missing_ok=True)
                raise
            return prev_max, ids

        return self.retry(transaction, "adding records")

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
            path = self.tensors / rel
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

    # ------------------------------------------------------------------ reading records
    def info_rows(self, ids: set[int]) -> dict[int, tuple[dict[str, Any], dict[str, float]]]:
        wanted = sorted(ids)
        out: dict[int, tuple[dict[str, Any], dict[str, float]]] = {}
        for start in range(0, len(wanted), _IN_LIMIT):
            chunk = wanted[start : start + _IN_LIMIT]

            def read(chunk: list[int] = chunk) -> list[Any]:
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id, info, metrics FROM tasks WHERE id IN ({marks})"
                return self.conn.execute(sql, chunk).fetchall()

            for rid, info, metrics in self.retry(read, "reading records"):
                out[int(rid)] = (json.loads(info), json.loads(metrics))
        missing = ids - out.keys()
        if missing:  # the index only ever holds committed ids, and rows are never deleted
            raise RuntimeError(f"index returned ids absent from {self.db}: {sorted(missing)[:5]}")
        return out

    def get(self, id: int) -> TaskRecord:
        """The record ``id``, with its parameters loaded (``{}`` if none)."""
        row = self.retry(
            lambda: self.conn.execute(
                "SELECT id, time, embedding, info, metrics, params FROM tasks WHERE id = ?",
                (int(id),),
            ).fetchone(),
            "reading a record",
        )
        if row is None:
            raise self.not_found(id)
        rid, t, blob, info, metrics, rel = row
        embedding = torch.from_numpy(np.frombuffer(blob, dtype="<f4").astype(np.float32))
        params = self.load_params(rid, rel)
        return TaskRecord(
            int(rid), float(t), embedding, json.loads(info), json.loads(metrics), params
        )

    def params(self, id: int) -> dict[str, Tensor]:
        """The stored parameters of record ``id`` (``{}`` if none)."""
        row = self.retry(
            lambda: self.conn.execute(
                "SELECT params FROM tasks WHERE id = ?", (int(id),)
            ).fetchone(),
            "reading a record",
        )
        if row is None:
            raise self.not_found(id)
        return self.load_params(int(id), row[0])

    def not_found(self, rid: Any) -> RecordNotFound:
        top = self.max_id()
        ids = f"ids run from 1 to {top}" if top else "it holds no records"
        err = RecordNotFound(
            f"no record {rid} in the task memory at {self.path} ({ids}); pass an id returned "
            "by add() or search()"
        )
        err.id, err.max_id = rid, top  # kept by pickling: BaseException pickles __dict__
        return err

    def load_params(self, rid: int, rel: str | None) -> dict[str, Tensor]:
        if rel is None:
            return {}
        if not PARAMS_NAME.match(rel):
            raise StoreError(
                f"record {rid} in {self.db} names an invalid tensor file {rel!r}: the store "
                "is damaged; restore it from a copy made by `mnemeta memory export`"
            )
        path = self.tensors / rel
        try:
            data = path.read_bytes()
            # safetensors parses a header and raw tensor bytes: no pickle, no code.
            return tensors_from_safetensors_bytes(data)
        except Exception as e:  # missing file, or safetensors' own error for damaged bytes
            raise StoreError(
                f"the parameters of record {rid} ({path}) are missing or damaged "
                f"({type(e).__name__}: {e}); restore the store from a copy made by "
                "`mnemeta memory export`"
            ) from None

    def ids(self) -> list[int]:
        """All record ids, ascending."""
        rows = self.retry(
            lambda: self.conn.execute("SELECT id FROM tasks ORDER BY id").fetchall(), "reading"
        )
        return [int(r[0]) for r in rows]

    # ------------------------------------------------------------------ input checks
    def shape_error(self, what: str, x: Any, want: str) -> str:
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        return (
            f"{what} must be a tensor of shape {want}, got {got}; this task memory "
            f"({self.path}) holds embeddings of dim {self.dim}"
        )

    def matrix(self, x: Any, what: str) -> np.ndarray:
        """``x`` as float32 ``(N, D)`` numpy, after checking shape, finiteness and norm."""
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise StoreError(self.shape_error(what, x, f"(N, {self.dim})"))
        arr = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        if not np.isfinite(arr).all():
            raise DataError(f"{what} holds NaN or infinite values; pass finite embeddings")
        if (np.abs(arr).max(axis=1) == 0).any():
            raise DataError(
                f"{what} holds an all-zero vector, which has no direction (cosine similarity is "
                "undefined); pass non-zero embeddings"
            )
        return arr


# ---------------------------------------------------------------------- serialisation
def _per_row(values: Sequence[Any] | None, n: int, name: str) -> list[Any]:
    if values is None:
        return [None] * n
    if isinstance(values, dict) or len(values) != n:
        got = "a dict" if isinstance(values, dict) else f"{len(values)} entries"
        raise ConfigError(f"{name} must be a list with one entry per embedding ({n}); got {got}")
    return list(values)


def _info_json(info: Any) -> str:
    if info is None:
        return "{}"
    if not isinstance(info, dict):
        raise ConfigError(f"info must be a dict of JSON values, got {type(info).__name__}")
    try:
        return json.dumps(info, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"info is not JSON-serialisable ({e}); pass plain values") from None


def _metrics_json(metrics: Any) -> str:
    if metrics is None:
        return "{}"
    if not isinstance(metrics, dict):
        raise ConfigError(f"metrics must be a dict of str -> float, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or isinstance(value, bool):
            raise ConfigError(f"metrics must map str to numbers; got {key!r}: {value!r}")
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"metrics must map str to numbers; got {key!r}: {value!r}") from None
    # NaN and infinities (a diverged loss) are kept: Python's json round-trips them.
    return json.dumps(out)


def _params_bytes(params: Any) -> bytes | None:
    if params is None or (isinstance(params, dict) and not params):
        return None
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in params.items()
    ):
        raise ConfigError("params must be a dict of str -> torch.Tensor (or None)")
    for key, value in params.items():
        # safetensors holds dense arrays only; .contiguous() would raise a bare RuntimeError.
        if value.layout != torch.strided:
            raise ConfigError(
                f"params[{key!r}] is a {value.layout} tensor; safetensors stores dense tensors "
                f"only: pass params[{key!r}].to_dense()"
            )
        if value.is_meta:
            raise ConfigError(f"params[{key!r}] is on the meta device and holds no values")
    try:
        # clone(): safetensors refuses tensors that share memory (views of one flat buffer).
        cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in params.items()}
        return safetensors.torch.save(cpu, metadata={"format": "mnemeta-task-params"})
    except Exception as e:  # safetensors' own error type (quantized, nested tensors, ...)
        raise ConfigError(f"params cannot be stored as safetensors ({e})") from None
