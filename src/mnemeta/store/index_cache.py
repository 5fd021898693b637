"""The index-cache policy of a task memory: when the saved FAISS index is trusted, caught up,
saved or rebuilt.

The FAISS index is a cache of the embeddings in tasks.sqlite, covering exactly the committed rows
with ``id <= max_id``. Ids grow with commit order (writes are serialised by ``BEGIN IMMEDIATE``),
so before each search the handle adds the rows with ``id > max_id`` (records from other
processes, or rows that committed before a crash) and is exact again. A saved index that is
damaged, of another store, or that covers records which do not exist is dropped and rebuilt from
SQLite (with a warning). The file format and the FAISS indexes themselves are in
:mod:`mnemeta.store.index`.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mnemeta.store import index as index_mod
from mnemeta.store.index import IndexFileError, VectorIndex
from mnemeta.store.records import Records

# Persist the index once the records it lacks on disk reach max(PERSIST_MIN, records it has):
# recovery after a crash re-adds at most that many rows from SQLite, and a bulk load writes the
# index file O(log N) times, about twice its final size in all (a fixed "every N adds" would
# rewrite a 1 GB flat index a hundred times during a million-record load).
PERSIST_MIN = 50_000


class IndexCache:
    """The vector index of one store handle, and what is known of the saved file.

    Loading it (in ``__init__``) reads the saved index if it matches the records, else starts
    empty, then catches up with SQLite; :meth:`save_after_open` then saves a rebuilt one.
    ``search_config`` holds the search knobs, applied to every index built here.

    Args:
        records: the store's records (the source of truth).
        kind: ``"flat"``, ``"hnsw"`` or ``"ivf"``.
        dim: embedding size D.
        store_id: the store's id; a saved index of another store is not used.
        path: the index file (``index.faiss``).
        read_only: never write the index file.
    """

    def __init__(
        self,
        records: Records,
        *,
        kind: str,
        dim: int,
        store_id: str,
        path: Path,
        read_only: bool,
    ) -> None:
        self.records = records
        self.kind = kind
        self.dim = dim
        self.store_id = store_id
        self.path = path
        self.read_only = read_only
        self.search_config: dict[str, int] = {}
        self.added_here = False
        self.saved_ntotal = 0
        self.saved_max_id = 0
        self.saved_ok = False
        self.index = self._load()

    def save_after_open(self) -> None:
        """Save at once an index that had to be rebuilt, or that lacks many records on disk."""
        if not self.read_only and self.index.ntotal and (not self.saved_ok or self.persist_due()):
            self.save()

    def _new_index(self, ids: np.ndarray, vecs: np.ndarray) -> VectorIndex:
        out = VectorIndex.build(self.kind, self.dim, ids, unit(vecs))
        out.configure(**self.search_config)
        return out

    def catch_up(self) -> None:
        """Add the committed rows that the index lacks (other processes' adds, crash leftovers)."""
        if self.records.max_id() <= self.index.max_id:
            return
        ids, vecs = self.records.rows_after(self.index.max_id)
        if self.index.needs_rebuild(self.index.ntotal + len(ids)):
            if self.index.ntotal:
                ids, vecs = self.records.rows_after(0)
            self.index = self._new_index(ids, vecs)
        else:
            self.index.add(ids, unit(vecs))

    def _load(self) -> VectorIndex:
        """The saved index if it matches the records, else an empty one; then caught up."""
        try:
            loaded, header = index_mod.load(self.path, kind=self.kind, dim=self.dim)
            self._check_saved(loaded, header)
        except IndexFileError as e:
            if self.path.exists():
                warnings.warn(
                    f"{self.path}: {e}; rebuilding the index from {self.records.db}",
                    RuntimeWarning,
                    stacklevel=4,  # the caller of TaskMemory(...)
                )
            self.index = VectorIndex(self.kind, self.dim)
        else:
            self.index = loaded
            self.saved_ok = True
            self.saved_ntotal = loaded.ntotal
            self.saved_max_id = loaded.max_id
        self.catch_up()
        return self.index

    def _check_saved(self, saved: VectorIndex, header: dict[str, Any]) -> None:
        if header.get("store_id") != self.store_id:
            raise IndexFileError("the saved index belongs to another store")
        if saved.max_id == 0:
            return
        blob = self.records.embedding_blob(saved.max_id, "checking the index")
        if blob is None:
            raise IndexFileError(f"the saved index covers record {saved.max_id}, which is absent")
        if zlib.crc32(blob) != header.get("max_id_embedding_crc32"):
            # E.g. tasks.sqlite restored from an older copy, then new records added.
            raise IndexFileError(
                f"record {saved.max_id} is not the one the saved index was built from"
            )
        if self.records.count_through(saved.max_id, "checking the index") != saved.ntotal:
            raise IndexFileError("the saved index holds another number of records than the store")

    def persist_due(self) -> bool:
        unsaved = self.index.ntotal - self.saved_ntotal
        return unsaved >= max(PERSIST_MIN, self.saved_ntotal)

    def write(self, path: Path) -> None:
        """Write the index to ``path``, with the checksum of its last record's embedding."""
        index = self.index
        blob = self.records.embedding_blob(index.max_id, "saving the index")
        crc = zlib.crc32(blob) if blob is not None else None
        index.save(path, {"store_id": self.store_id, "max_id_embedding_crc32": crc})

    def save(self) -> None:
        """Write the index unless the file on disk (maybe another process's) covers as much."""
        if self.read_only or self.index.max_id <= self.saved_max_id:
            return
        # Trust the header on disk only if the file we loaded was whole: a damaged payload can
        # sit behind an intact header.
        try:
            if not self.saved_ok:
                raise IndexFileError("the saved index was unusable")
            header = index_mod.read_header(self.path)
            if (
                header.get("store_id") == self.store_id
                and int(header.get("max_id", 0)) >= self.index.max_id
            ):
                # Another process saved one covering as much (ours is a prefix of it): keep it.
                self.saved_ntotal = self.index.ntotal
                self.saved_max_id = self.index.max_id
                return
        except (IndexFileError, ValueError, TypeError):
            pass
        self.write(self.path)
        self.saved_ok = True
        self.saved_ntotal = self.index.ntotal
        self.saved_max_id = self.index.max_id

    def added(self, prev_max: int, ids: list[int], vecs: np.ndarray) -> None:
        """Take in rows this handle just committed: ``ids`` after ``prev_max``, raw ``vecs``."""
        self.added_here = True
        n = len(ids)
        if prev_max == self.index.max_id and not self.index.needs_rebuild(self.index.ntotal + n):
            # The index held every row before ours: add ours from memory.
            self.index.add(np.asarray(ids, dtype=np.int64), unit(vecs))
        else:  # another process committed in between, or IVF wants (re)training
            self.catch_up()
        if self.persist_due():
            self.save()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and ids ``(Q, k)`` for raw ``queries`` ``(Q, D)``; id -1 marks no hit."""
        return self.index.search(unit(queries), k)

    def rebuild(self) -> None:
        """A fresh index from every record, saved (or the file removed if there are none)."""
        # IVF cells retrained for the current size, HNSW without stale links.
        ids, vecs = self.records.rows_after(0)
        self.index = self._new_index(ids, vecs)
        self.saved_max_id = 0
        if self.index.ntotal:
            self.write(self.path)
            self.saved_ok = True
            self.saved_ntotal = self.index.ntotal
            self.saved_max_id = self.index.max_id
        else:
            self.path.unlink(missing_ok=True)

    def save_on_close(self) -> None:
        """Save if this handle added records, or the saved index was unusable or is due."""
        if (
            not self.read_only
            and self.index.max_id > self.saved_max_id
            and (self.added_here or not self.saved_ok or self.persist_due())
        ):
            self.save()

    def state(self) -> dict[str, Any]:
        """The index's kind, size and search settings, for :meth:`TaskMemory.info`."""
        state: dict[str, Any] = {"kind": self.kind, "records": self.index.ntotal}
        state["max_id"] = self.index.max_id
        if self.kind == "hnsw":
            state |= {"M": index_mod.HNSW_M, "ef_search": self.index.ef_search}
        if self.kind == "ivf":
            trained = self.index.trained_n > 0
            state["trained_on"] = self.index.trained_n
            if trained:
                state["nlist"] = index_mod.ivf_nlist(self.index.trained_n)
                state["nprobe"] = self.index.nprobe
            else:
                state["note"] = f"exact until {index_mod.IVF_MIN_TRAIN} records"
        return state


def unit(vecs: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so that the inner product is the cosine."""
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return np.ascontiguousarray(vecs / np.maximum(norms, np.finfo(np.float32).tiny), np.float32)
