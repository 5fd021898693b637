"""Vector indexes over unit-length task embeddings (FAISS), and their file format.

Embeddings are normalised before they reach an index, so the inner product *is* the cosine
similarity, and every index here uses ``METRIC_INNER_PRODUCT``. Three kinds:

- ``flat``: exact search (``IndexFlatIP``), O(N·D) per query. The default: exact, no tuning,
  and fast enough up to ~10⁵ records (7.5 ms per query over 10⁵ × 256 on one core of the
  shared CI machine).
- ``hnsw``: a graph (``IndexHNSWFlat``); no training, good recall, but each insertion is a
  graph search: adding 10⁵ records was 6× slower than for ``ivf`` (benchmarks/task_memory.py).
- ``ivf``: inverted lists (``IndexIVFFlat``): k-means cells, a query scans ``nprobe`` cells.
  It needs training data, so an ``ivf`` store stays exact (flat) until it holds
  :data:`IVF_MIN_TRAIN` records, and retrains each time it has grown :data:`IVF_RETRAIN_GROWTH`
  times since the last training (the cell count follows √N).

All kinds map FAISS labels to record ids (``IndexIDMap`` or the IVF's own ids), so a search
returns record ids directly.

File format (``index.faiss``): FAISS's own bytes (``faiss.write_index``), then a JSON header
(kind, dim, store id, the record ids covered, CRC-32 of FAISS's bytes), its length and a magic
line. It is written to a temporary file and renamed into place, so readers see a whole old file
or a whole new one. The checksum is verified before FAISS parses the file: a damaged file is
detected and rebuilt from SQLite, never half-loaded.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from mnemeta.errors import ConfigError
from mnemeta.io import atomic_write_bytes

KINDS = ("flat", "hnsw", "ivf")

# HNSW: M = 32 links per node. On 100k clustered 256-d vectors (the data of
# benchmarks/task_memory.py, FAISS alone) M = 32 reached recall@5 0.96 at efSearch 32 where
# M = 16 reached 0.93, for ~20% slower insertion and 128 bytes more per vector.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40  # FAISS's default; higher buys little recall and costs insert time
# efSearch 128: recall@5 0.977 on 200k records of the benchmark's data where 64 gave 0.939, and
# 0.968 (64: 0.937) on harder data, for p50 0.6-0.8 ms (benchmarks/results/task_memory.md).
HNSW_EF_SEARCH = 128

# IVF: below this many records the flat index is both exact and fast (~0.1 ms for 1000 × 256),
# and k-means on fewer points gives poor cells.
IVF_MIN_TRAIN = 1000
IVF_RETRAIN_GROWTH = 4  # retrain at 4× growth: total retraining work stays ≤ 4/3 of one build
IVF_NPROBE = 8
IVF_KMEANS_ITER = 10  # FAISS's default is 25; fewer keep the retraining during adds short
IVF_TRAIN_PER_LIST = 64  # k-means sample: 64 points per cell (FAISS warns below 39)

_faiss: Any = faiss  # for the names that FAISS's type stubs leave out (PyCallbackIOWriter)

MAGIC = b"MNEMETA-TASK-INDEX\n"
FILE_VERSION = 1


class IndexFileError(Exception):
    """The saved index cannot be used (missing, damaged, or of another store); rebuild it."""


def ivf_nlist(n: int) -> int:
    """Cells for ``n`` vectors: √n (the usual rule), but ≥ 39 training points per cell."""
    return max(1, min(int(math.sqrt(n)), n // 39))


class VectorIndex:
    """A FAISS index of unit vectors keyed by record id.

    ``max_id`` is the largest record id added; ids are added in increasing order, so the index
    covers exactly the committed records with ``id <= max_id`` (the store keeps it that way).
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        *,
        index: Any = None,
        max_id: int = 0,
        trained_n: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.dim = dim
        self.max_id = max_id
        # For ivf: the record count the cells were trained on (0 = not trained yet: flat).
        self.trained_n = trained_n
        self.index: Any = index if index is not None else self._new_exact_or_graph()
        self.ef_search = HNSW_EF_SEARCH
        self.nprobe = IVF_NPROBE
        self._apply_search_params()

    # ---- building ----
    def _new_exact_or_graph(self) -> Any:
        if self.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            return faiss.IndexIDMap(graph)
        return faiss.IndexIDMap(faiss.IndexFlatIP(self.dim))

    @classmethod
    def build(cls, kind: str, dim: int, ids: np.ndarray, vecs: np.ndarray) -> VectorIndex:
        """A new index of ``vecs`` ``(N, dim)`` unit float32 rows with ids ``(N,)`` ascending."""
        n = len(ids)
        if kind == "ivf" and n >= IVF_MIN_TRAIN:
            nlist = ivf_nlist(n)
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.niter = IVF_KMEANS_ITER
            ivf.cp.seed = 1234
            # A fixed sample (seeded) so that the same records always give the same cells.
            take = min(n, IVF_TRAIN_PER_LIST * nlist)
            sample = np.random.default_rng(0).choice(n, size=take, replace=False)
            ivf.train(np.ascontiguousarray(vecs[np.sort(sample)]))
            out = cls(kind, dim, index=ivf, trained_n=n)
        else:
            out = cls(kind, dim)
        out.add(ids, vecs)
        return out

    def needs_rebuild(self, n_after: int) -> bool:
        """Whether adding up to ``n_after`` records calls for a rebuild (IVF training)."""
        if self.kind != "ivf" or n_after < IVF_MIN_TRAIN:
            return False
        return self.trained_n == 0 or n_after >= IVF_RETRAIN_GROWTH * self.trained_n

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add unit rows ``vecs`` ``(N, dim)`` float32 with ids ``(N,)`` int64, ascending and
        all greater than :attr:`max_id`."""
        if len(ids) == 0:
            return
        if int(ids[0]) <= self.max_id:
            raise ValueError(f"ids must grow: got {int(ids[0])} after {self.max_id}")
        self.index.add_with_ids(
            np.ascontiguousarray(vecs, dtype=np.float32), np.ascontiguousarray(ids, np.int64)
        )
        self.max_id = int(ids[-1])

    # ---- searching ----
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def configure(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        if ef_search is not None:
            self.ef_search = int(ef_search)
        if nprobe is not None:
            self.nprobe = int(nprobe)
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self.kind == "hnsw":
            idmap: Any = faiss.downcast_index(self.index)
            graph: Any = faiss.downcast_index(idmap.index)
            graph.hnsw.efSearch = self.ef_search
        elif self.kind == "ivf" and self.trained_n > 0:
            faiss.extract_index_ivf(self.index).nprobe = self.nprobe

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner products ``(Q, k)`` and ids ``(Q, k)`` of unit ``queries`` ``(Q, dim)``, best
        first; id ``-1`` pads rows when fewer than ``k`` records match."""
        sims, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims, ids

    # ---- the file ----
    def save(self, path: Path, header: dict[str, Any]) -> None:
        """Write the index atomically with ``header`` (plus what this class records).

        FAISS streams the index straight into the file (no copy of it in memory), and the
        checksum is computed on the way.
        """

        def write(f: BinaryIO) -> None:
            state = {"crc": 0, "bytes": 0}

            def sink(chunk: bytes) -> None:
                state["crc"] = zlib.crc32(chunk, state["crc"])
                state["bytes"] += len(chunk)
                f.write(chunk)

            faiss.write_index(self.index, _faiss.PyCallbackIOWriter(sink))
            full = {
                **header,
                "version": FILE_VERSION,
                "kind": self.kind,
                "dim": self.dim,
                "max_id": self.max_id,
                "ntotal": self.ntotal,
                "trained_n": self.trained_n,
                "payload_bytes": state["bytes"],
                "payload_crc32": state["crc"],
            }
            head = json.dumps(full, sort_keys=True).encode()
            f.write(head)
            f.write(struct.pack("<Q", len(head)))
            f.write(MAGIC)

        atomic_write_bytes(path, write)


# The file: FAISS's bytes, then the JSON header, its length (8 bytes, little-endian) and MAGIC.
# The header is a trailer so that FAISS can read the index from the file itself (faiss.read_index
# stops where its index ends), without a second copy in memory: 1 GB at 10⁶ × 256.
def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a saved index; :class:`IndexFileError` if absent or unreadable."""
    try:
        with open(path, "rb") as f:
            return _read_header(f)
    except FileNotFoundError:
        raise IndexFileError("no saved index") from None
    except OSError as e:
        raise IndexFileError(f"cannot read the saved index: {e}") from None


def _read_header(f: BinaryIO) -> dict[str, Any]:
    size = f.seek(0, 2)
    tail = len(MAGIC) + 8
    if size < tail:
        raise IndexFileError("not a mnemeta index file (too short)")
    f.seek(size - tail)
    raw = f.read(tail)
    if raw[8:] != MAGIC:
        raise IndexFileError("not a mnemeta index file (bad magic)")
    (head_len,) = struct.unpack("<Q", raw[:8])
    if head_len > min(1 << 20, size - tail):
        raise IndexFileError("implausible header length")
    f.seek(size - tail - head_len)
    try:
        header = json.loads(f.read(head_len))
    except ValueError:
        raise IndexFileError("unreadable header") from None
    if not isinstance(header, dict) or header.get("version") != FILE_VERSION:
        raise IndexFileError("unknown index file version")
    if header.get("payload_bytes") != size - tail - head_len:
        raise IndexFileError("saved index is truncated or damaged (size mismatch)")
    return header


def load(path: Path, *, kind: str, dim: int) -> tuple[VectorIndex, dict[str, Any]]:
    """Read and verify a saved index; :class:`IndexFileError` says why it cannot be used.

    The checksum is verified before FAISS parses a byte: a damaged file could otherwise make
    it allocate or read nonsense.
    """
    try:
        with open(path, "rb") as f:
            header = _read_header(f)
            if header.get("kind") != kind or header.get("dim") != dim:
                raise IndexFileError(
                    f"saved index is {header.get('kind')} of dim {header.get('dim')}, "
                    f"the store is {kind} of dim {dim}"
                )
            f.seek(0)
            crc, left = 0, int(header["payload_bytes"])
            while left > 0:
                chunk = f.read(min(left, 1 << 24))
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
            if left or crc != header.get("payload_crc32"):
                raise IndexFileError("saved index is truncated or damaged (checksum mismatch)")
    except FileNotFoundError:
        raise IndexFileError("no saved index") from None
    except OSError as e:
        raise IndexFileError(f"cannot read the saved index: {e}") from None
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:  # FAISS raises RuntimeError for malformed input
        raise IndexFileError(f"FAISS could not read the saved index: {e}") from None
    out = VectorIndex(
        kind,
        dim,
        index=index,
        max_id=int(header["max_id"]),
        trained_n=int(header.get("trained_n", 0)),
    )
    if out.ntotal != header.get("ntotal"):
        raise IndexFileError("saved index holds a different number of vectors than its header")
    return out, header
