"""TaskMemory: records, exact and approximate search, persistence, and the errors users meet."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import warnings
from pathlib import Path

import pytest
import torch

from mnemeta.errors import ConfigError, MnemetaError, StoreError
from mnemeta.store import Hit, RecordNotFound, TaskMemory, TaskRecord, salvage
from mnemeta.store.index import IVF_MIN_TRAIN
from mnemeta.store.maintenance import STALE_TMP_S

DIM = 24


def brute_force(x: torch.Tensor, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and 1-based ids of the k best rows of x for each query (reference)."""
    sims = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(x, dim=-1).T
    top = sims.topk(k, dim=-1)
    return top.values, top.indices + 1


def clustered(n: int, dim: int, clusters: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    labels = torch.randint(clusters, (n,), generator=g)
    return centres[labels] + 0.5 * torch.randn(n, dim, generator=g)


@pytest.fixture
def mem(tmp_path: Path) -> TaskMemory:
    return TaskMemory(tmp_path / "mem", dim=DIM)


def test_records_round_trip(mem: TaskMemory) -> None:
    emb = torch.randn(DIM)
    flat = torch.arange(12.0)
    params = {
        "head.weight": flat[:8].view(2, 4),  # two views of one buffer: stored as separate tensors
        "head.bias": flat[8:10],
        "task/prototypes": torch.randn(5, 3, dtype=torch.float64),
        "steps": torch.tensor([3, 4]),
        "scale": torch.ones(2, dtype=torch.bfloat16),
    }
    info = {"dataset": "omniglot", "classes": ["a", "b"], "tags": {"shots": 1}}
    metrics = {"loss_before": 1.5, "loss_after": 0.25, "diverged": float("nan")}
    rid = mem.add(emb, params, info, metrics)
    plain = mem.add(torch.randn(DIM))
    assert (rid, plain) == (1, 2) and len(mem) == 2
    rec = mem.get(rid)
    assert isinstance(rec, TaskRecord) and rec.id == rid
    assert torch.equal(rec.embedding, emb) and rec.embedding.dtype == torch.float32
    assert rec.info == info
    assert rec.metrics["loss_after"] == 0.25 and rec.metrics["diverged"] != rec.metrics["diverged"]
    assert rec.params.keys() == params.keys()
    for key, value in params.items():
        assert rec.params[key].dtype == value.dtype and torch.equal(rec.params[key], value)
    assert mem.params(plain) == {} and mem.get(plain).info == {} and mem.get(plain).metrics == {}
    assert mem.get(plain).time >= rec.time
    assert mem.ids() == [1, 2]


def test_search_is_exact_cosine(mem: TaskMemory) -> None:
    x = torch.randn(500, DIM) * torch.rand(500, 1) * 10  # norms vary: cosine must ignore them
    ids = mem.add_many(x, infos=[{"row": i} for i in range(500)])
    assert ids == list(range(1, 501))
    q = torch.randn(20, DIM)
    want_sims, want_ids = brute_force(x, q, 5)
    got = mem.search_many(q, k=5)
    for hits, sims, best in zip(got, want_sims, want_ids, strict=True):
        assert [h.id for h in hits] == best.tolist()
        assert [h.similarity for h in hits] == pytest.approx(sims.tolist(), abs=1e-5)
        assert all(h.info == {"row": h.id - 1} for h in hits)
    one = mem.search(q[3], k=5)
    assert one == got[3] and all(isinstance(h, Hit) for h in one)
    self_hit = mem.search(x[10], k=1)[0]
    assert self_hit.id == 11 and self_hit.similarity == pytest.approx(1.0, abs=1e-6)
    assert len(mem.search(q[0], k=1000)) == 500  # k larger than the store: all of it


def test_empty_store_searches_to_nothing(mem: TaskMemory) -> None:
    assert mem.search(torch.randn(DIM)) == [] and len(mem) == 0
    assert mem.search_many(torch.randn(3, DIM)) == [[], [], []]


def test_persists_across_reopen(tmp_path: Path) -> None:
    x = torch.randn(300, DIM)
    with TaskMemory(tmp_path / "m", dim=DIM) as mem:
        mem.add_many(x[:200])
        before = mem.search(x[5], k=3)
        mem.add(x[200], {"w": torch.ones(3)})
    with TaskMemory(tmp_path / "m") as mem:  # dim and index kind come from the store
        assert len(mem) == 201 and mem.dim == DIM and mem.kind == "flat"
        assert mem.search(x[5], k=3) == before
        assert torch.equal(mem.params(201)["w"], torch.ones(3))
        mem.add_many(x[201:])
    with TaskMemory(tmp_path / "m", dim=DIM, index="flat", create=False) as mem:
        assert len(mem) == 300


def test_another_handle_sees_new_records_without_reopening(tmp_path: Path) -> None:
    writer = TaskMemory(tmp_path / "m", dim=DIM)
    reader = TaskMemory(tmp_path / "m", read_only=True)
    x = torch.randn(40, DIM)
    writer.add_many(x[:20])
    assert len(reader) == 20
    writer.add_many(x[20:])
    assert reader.search(x[33], k=1)[0].id == 34
    assert reader.get(40).id == 40
    with pytest.raises(MnemetaError, match="opened read_only; open it with read_only=False"):
        reader.add(x[0])
    writer.close()
    reader.close()
    assert not any(p.name.startswith(".") for p in (tmp_path / "m").iterdir())


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_recall(tmp_path: Path, kind: str) -> None:
    n = 4000
    x = clustered(n, DIM, clusters=40, seed=0)
    q = clustered(200, DIM, clusters=40, seed=0)[:200] + 0.1 * torch.randn(200, DIM)
    with TaskMemory(tmp_path / kind, dim=DIM, index=kind) as mem:
        mem.add_many(x[:500])
        state = mem.info()["index_state"]
        if kind == "ivf":  # too few records to train cells: exact until IVF_MIN_TRAIN
            assert state["trained_on"] == 0 and IVF_MIN_TRAIN > 500
        for start in range(500, n, 700):
            mem.add_many(x[start : start + 700])
        assert len(mem) == n
        if kind == "ivf":
            assert mem.info()["index_state"]["trained_on"] >= IVF_MIN_TRAIN
            mem.configure_search(nprobe=16)
        _, want = brute_force(x, q, 5)
        got = mem.search_many(q, k=5)
        recall = sum(
            len({h.id for h in hits} & set(best.tolist()))
            for hits, best in zip(got, want, strict=True)
        ) / (5 * len(q))
        assert recall >= 0.9, recall
    with TaskMemory(tmp_path / kind) as mem:  # the saved index is the one reloaded
        assert mem.kind == kind and len(mem) == n
        assert mem.search(x[17], k=1)[0].id == 18


def test_export_is_a_consistent_copy(tmp_path: Path) -> None:
    x = torch.randn(30, DIM)
    with TaskMemory(tmp_path / "m", dim=DIM) as mem:
        mem.add_many(x[:20], params=[{"w": torch.full((2,), float(i))} for i in range(20)])
        report = mem.export(tmp_path / "copy")
        assert report["count"] == 20
        mem.add_many(x[20:])
        with pytest.raises(MnemetaError, match="exists and is not empty; export into a new"):
            mem.export(tmp_path / "copy")
    with TaskMemory(tmp_path / "copy", read_only=True) as copy:
        assert len(copy) == 20
        assert torch.equal(copy.params(7)["w"], torch.full((2,), 6.0))
        assert copy.search(x[4], k=1)[0].id == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_compact_drops_orphan_files_only(tmp_path: Path) -> None:
    with TaskMemory(tmp_path / "m", dim=DIM) as mem:
        mem.add_many(torch.randn(10, DIM), params=[{"w": torch.ones(2)}] * 10)
        orphan = tmp_path / "m" / "tensors" / "00000" / "99-0123abcd.safetensors"
        orphan.write_bytes(b"left by a writer killed before its commit")
        report = mem.compact()
        assert report["removed_files"] == 1 and report["count"] == 10
        assert not orphan.exists()
        assert all(torch.equal(mem.params(i)["w"], torch.ones(2)) for i in range(1, 11))


def test_shape_and_value_errors(mem: TaskMemory) -> None:
    with pytest.raises(MnemetaError, match=r"shape \(16,\); this task memory .* dim 24"):
        mem.add(torch.randn(16))
    with pytest.raises(MnemetaError, match=r"must be a tensor of shape \(24,\), got shape \(1, 24"):
        mem.search(torch.randn(1, DIM))
    with pytest.raises(MnemetaError, match=r"shape \(N, 24\), got shape \(3, 8\)"):
        mem.search_many(torch.randn(3, 8))
    with pytest.raises(MnemetaError, match="all-zero vector"):
        mem.add(torch.zeros(DIM))
    with pytest.raises(MnemetaError, match="NaN or infinite"):
        mem.add(torch.full((DIM,), float("nan")))
    with pytest.raises(MnemetaError, match="info is not JSON-serialisable"):
        mem.add(torch.randn(DIM), info={"x": object()})
    with pytest.raises(MnemetaError, match="metrics must map str to numbers"):
        mem.add(torch.randn(DIM), metrics={"acc": "high"})
    with pytest.raises(MnemetaError, match="params must be a dict of str -> torch.Tensor"):
        mem.add(torch.randn(DIM), params={"w": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(MnemetaError, match=r"infos must be a list with one entry per embedding"):
        mem.add_many(torch.randn(3, DIM), infos=[{}])
    with pytest.raises(MnemetaError, match="k=0 must be a positive integer"):
        mem.search(torch.randn(DIM), k=0)
    assert len(mem) == 0  # nothing half-added
    with pytest.raises(RecordNotFound, match=r"no record 5 in the task memory") as e:
        mem.get(5)
    assert isinstance(e.value, KeyError)
    mem.close()
    with pytest.raises(MnemetaError, match="is closed; open it again"):
        mem.search(torch.randn(DIM))


def test_opening_errors(tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match="needs the embedding size: pass dim=D"):
        TaskMemory(tmp_path / "new")
    with pytest.raises(MnemetaError, match=r"no task memory at .* \(create=False"):
        TaskMemory(tmp_path / "new", dim=DIM, create=False)
    with pytest.raises(MnemetaError, match=r"\(read_only=True does not create one\)"):
        TaskMemory(tmp_path / "new", read_only=True)
    assert not (tmp_path / "new").exists()
    with pytest.raises(MnemetaError, match="index='annoy' is unknown; choose one of flat, hnsw"):
        TaskMemory(tmp_path / "new", dim=DIM, index="annoy")
    TaskMemory(tmp_path / "m", dim=DIM, index="hnsw").close()
    with pytest.raises(MnemetaError, match="holds embeddings of dim 24, not 32; pass dim=24"):
        TaskMemory(tmp_path / "m", dim=32)
    with pytest.raises(MnemetaError, match="was created with index='hnsw', not 'flat'"):
        TaskMemory(tmp_path / "m", index="flat")
    with pytest.raises(MnemetaError, match=r"is a file, not a task memory folder \(its folder"):
        TaskMemory(tmp_path / "m" / "tasks.sqlite")


def test_marker_and_database_must_agree(tmp_path: Path) -> None:
    TaskMemory(tmp_path / "a", dim=DIM).close()
    TaskMemory(tmp_path / "b", dim=DIM).close()
    (tmp_path / "a" / "tasks.sqlite").write_bytes((tmp_path / "b" / "tasks.sqlite").read_bytes())
    with pytest.raises(MnemetaError, match="describe different stores"):
        TaskMemory(tmp_path / "a")


def test_interrupted_creation_is_finished(tmp_path: Path) -> None:
    """A folder with only an empty tasks.sqlite (a creation killed before the marker)."""
    folder = tmp_path / "m"
    folder.mkdir()
    sqlite3.connect(folder / "tasks.sqlite").close()
    with TaskMemory(folder, dim=DIM) as mem:
        mem.add(torch.randn(DIM))
    assert (folder / "mnemeta-task-memory.json").is_file()


def test_argument_errors_say_what_was_given(mem: TaskMemory) -> None:
    """Each refusal names the argument and what it got, so that the caller can fix it."""
    x = torch.randn(DIM)
    with warnings.catch_warnings():  # quantized tensors are deprecated; safetensors refuses them
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    cases = [
        ({"info": [1]}, r"^info must be a dict of JSON values, got list$"),
        ({"metrics": [1.0]}, r"^metrics must be a dict of str -> float, got list$"),
        ({"metrics": {1: 2.0}}, r"^metrics must map str to numbers; got 1: 2\.0$"),
        ({"metrics": {"ok": True}}, r"^metrics must map str to numbers; got 'ok': True$"),
        (
            {"params": [torch.ones(2)]},
            r"^params must be a dict of str -> torch\.Tensor \(or None\)$",
        ),
        (
            {"params": {"w": quantized}},
            r"^params cannot be stored as safetensors \(.+\)$",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(MnemetaError, match=message):
            mem.add(x, **kwargs)
    with pytest.raises(
        MnemetaError,
        match=r"^params must be a list with one entry per embedding \(3\); got a dict$",
    ):
        mem.add_many(torch.randn(3, DIM), params={"w": torch.ones(1)})  # type: ignore[arg-type]
    with pytest.raises(
        MnemetaError,
        match=r"^metrics must be a list with one entry per embedding \(3\); got 2 entries$",
    ):
        mem.add_many(torch.randn(3, DIM), metrics=[{}, {}])
    with pytest.raises(
        MnemetaError, match=r"embedding must be a tensor of shape \(24,\), got list"
    ):
        mem.add([0.0] * DIM)  # type: ignore[arg-type]
    with pytest.raises(MnemetaError, match=r"^nprobe=0 must be a positive integer$"):
        mem.configure_search(nprobe=0)
    assert len(mem) == 0
    assert str(RecordNotFound()) == ""
    with pytest.raises(RecordNotFound, match=r"^no record 9 in the task memory"):
        mem.params(9)


def test_params_file_is_tagged(mem: TaskMemory) -> None:
    """The tensor files say what they are (safetensors metadata), for tools that find one."""
    from safetensors import safe_open

    rid = mem.add(torch.randn(DIM), params={"w": torch.ones(3)})
    files = list((mem.path / "tensors").rglob("*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), framework="pt") as f:
        assert f.metadata() == {"format": "mnemeta-task-params"}
    assert torch.equal(mem.params(rid)["w"], torch.ones(3))


def test_export_report_and_destinations(tmp_path: Path) -> None:
    """The report: the destination, the record count and its size on disk; a destination under
    folders that do not exist yet is made; an empty folder is used; a file is refused; no
    temporary folder is left beside it."""
    with TaskMemory(tmp_path / "m", dim=DIM) as mem:
        mem.add_many(torch.randn(4, DIM), params=[{"w": torch.ones(2)}] * 4)
        deep = tmp_path / "a" / "b" / "copy"
        report = mem.export(deep)
        size = sum(p.stat().st_size for p in deep.rglob("*") if p.is_file())
        assert report == {"path": str(deep), "count": 4, "disk_bytes": size} and size > 0
        empty = tmp_path / "empty"
        empty.mkdir()
        assert mem.export(empty)["count"] == 4
        (tmp_path / "file").write_text("x")
        with pytest.raises(MnemetaError, match="exists and is not empty"):
            mem.export(tmp_path / "file")
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["copy"]
    with TaskMemory(deep, read_only=True) as copy:
        assert len(copy) == 4
        mode = copy._records.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode.lower() == "wal"


def test_a_long_lock_names_the_operation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that cannot get the lock within the deadline says which operation waited and
    what to do (the deadline is set to 0 s here instead of 60 s, so that it expires at once)."""
    from mnemeta.store import schema

    with TaskMemory(tmp_path / "m", dim=DIM) as mem:
        holder = sqlite3.connect(tmp_path / "m" / "tasks.sqlite", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
        monkeypatch.setattr(schema, "BUSY_DEADLINE_S", 0.0)
        try:
            with pytest.raises(
                MnemetaError,
                match=r"stayed locked for 0 s while adding records \(.*\); another process holds "
                "a long write transaction: wait for it, or stop it",
            ):
                mem.add(torch.randn(DIM))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert len(mem) == 0


def small_store(path: Path) -> None:
    with TaskMemory(path, dim=DIM) as mem:
        mem.add_many(torch.randn(5, DIM), params=[{"w": torch.ones(2)}] * 5)


def hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))  # SQLite's side files
    }


def test_export_destination_inside_the_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mem"
    small_store(path)
    before = hashes(path)
    with TaskMemory(path, read_only=True) as mem:
        with pytest.raises(StoreError, match=r"mem is the task memory itself; nothing was"):
            mem.export(path)
        for inside in (path / "sub", path / "tensors" / "x", path / "." / "a" / ".." / "b"):
            with pytest.raises(StoreError, match=r"is inside the task memory .*mem; nothing"):
                mem.export(inside)
        (tmp_path / "file").write_text("x")
        with pytest.raises(StoreError, match=r"cannot create the folder for the copy at .*file/c"):
            mem.export(tmp_path / "file" / "copy")
    with pytest.raises(StoreError, match="is inside the task memory"):
        salvage(path, path / "sub")
    assert hashes(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["file", "mem"]


def test_refused_creation_creates_nothing(tmp_path: Path) -> None:
    """A folder that is not a task memory is left as it was: no tensors/ folder either."""
    for name, content in (("theirs", None), ("garbage", b"\x00not sqlite" * 100)):
        folder = tmp_path / name
        folder.mkdir()
        if content is None:
            conn = sqlite3.connect(folder / "tasks.sqlite")
            conn.execute("CREATE TABLE todo (what TEXT)")
            conn.commit()
            conn.close()
        else:
            (folder / "tasks.sqlite").write_bytes(content)
        before = hashes(folder)
        with pytest.raises(StoreError, match="is not a mnemeta task memory"):
            TaskMemory(folder, dim=DIM)
        assert sorted(p.name for p in folder.iterdir()) == ["tasks.sqlite"]
        assert hashes(folder) == before


def test_stale_temp_files_are_removed_on_a_writable_open(tmp_path: Path) -> None:
    """Temp files of writes killed mid-way (mnemeta.io names them .NAME.XXXXXXXX.tmp): old ones
    go at the next writable open; young ones (maybe another process's write in progress) stay,
    and a read-only open removes nothing."""
    path = tmp_path / "mem"
    small_store(path)
    old_time = time.time() - STALE_TMP_S - 60
    old = [path / ".index.faiss.0123abcd.tmp", path / ".mnemeta-task-memory.json.89abcdef.tmp"]
    young = path / ".index.faiss.fedcba98.tmp"
    for p in [*old, young]:
        p.write_bytes(b"partial")
    for p in old:
        os.utime(p, (old_time, old_time))
    TaskMemory(path, read_only=True).close()
    assert all(p.exists() for p in [*old, young])
    TaskMemory(path).close()
    assert not any(p.exists() for p in old) and young.exists()


def test_sparse_params_are_a_config_error(tmp_path: Path) -> None:
    with TaskMemory(tmp_path / "m", dim=DIM) as mem:
        sparse = torch.eye(3).to_sparse()
        with pytest.raises(ConfigError, match=r"params\['w'\] is a torch.sparse_coo tensor; .* "):
            mem.add(torch.ones(DIM), params={"w": sparse})
        meta = torch.empty(2, device="meta")
        with pytest.raises(ConfigError, match=r"params\['m'\] is on the meta device"):
            mem.add(torch.ones(DIM), params={"m": meta})
        assert len(mem) == 0
        rid = mem.add(torch.ones(DIM), params={"w": sparse.to_dense()})
        assert torch.equal(mem.params(rid)["w"], torch.eye(3))
