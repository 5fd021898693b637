"""Durability under concurrency and crashes (issue 5, item 7).

Writers are forked from a forkserver that has already imported torch, FAISS and mnemeta, so a
child starts in milliseconds instead of the ~2 s of a fresh interpreter.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import sqlite3
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from mnemeta.errors import MnemetaError
from mnemeta.store import StoreDamaged, TaskMemory

sys.path.insert(0, str(Path(__file__).parent))
import store_workers as workers

DIM = workers.DIM


@pytest.fixture(scope="module")
def ctx() -> mp.context.ForkServerContext:
    context = mp.get_context("forkserver")
    # Preload what is slow to import. (Not store_workers itself: Python 3.11's forkserver ignores
    # sys.path, so it could not find it; each child imports it, fast once torch is loaded.)
    context.set_forkserver_preload(["mnemeta.store"])
    return context


def read_log(path: Path) -> dict[int, int]:
    """record id -> seed, for every complete line (a kill may cut the last line short)."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            rid, seed = line.split()
            out[int(rid)] = int(seed)
    return out


def check_store(path: Path, logged: dict[int, int]) -> TaskMemory:
    """Every logged record readable and intact; every row whole; the index consistent."""
    mem = TaskMemory(path)
    rows = sqlite3.connect(path / "tasks.sqlite").execute("SELECT id, info FROM tasks").fetchall()
    assert len(mem) == len(rows) == mem.info()["index_state"]["records"]
    assert set(logged) <= {r[0] for r in rows}
    for rid, _ in rows:
        rec = mem.get(rid)  # every committed row, logged or not, is whole
        seed = rec.info["seed"]
        assert logged.get(rid, seed) == seed
        assert torch.equal(rec.embedding, workers.embedding(seed))
        want = workers.params_for(seed, rec.info["every"]) or {}
        assert rec.params.keys() == want.keys()
        assert all(torch.equal(rec.params[k], want[k]) for k in want)
    ids = [r[0] for r in rows]
    queries = torch.stack([mem.get(i).embedding for i in ids])
    top = [hits[0].id for hits in mem.search_many(queries, k=1)]
    assert top == ids
    return mem


def test_four_processes_add_concurrently(tmp_path: Path, ctx: mp.context.ForkServerContext) -> None:
    path = tmp_path / "mem"
    TaskMemory(path, dim=DIM).close()
    logs = [tmp_path / f"log{w}" for w in range(4)]
    procs = [
        ctx.Process(target=workers.concurrent_adder, args=(str(path), w, 1000, str(logs[w])))
        for w in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    logged: dict[int, int] = {}
    for log in logs:
        entries = read_log(log)
        assert len(entries) == 1000
        logged |= entries
    assert len(logged) == 4000  # distinct ids
    assert sorted(logged) == list(range(1, 4001))
    with check_store(path, logged) as mem:
        assert len(mem) == 4000
        hits = mem.search(workers.embedding(2_000_500), k=1)
        assert hits[0].info == {"seed": 2_000_500, "every": 10}
        assert hits[0].metrics == {"i": 500.0}
        tensors = list((path / "tensors").rglob("*.safetensors"))
        assert len(tensors) == 400


def test_kill_nine_during_writes(tmp_path: Path, ctx: mp.context.ForkServerContext) -> None:
    path = tmp_path / "mem"
    TaskMemory(path, dim=DIM).close()
    log = tmp_path / "log"
    rng = random.Random(0)
    for trial in range(20):
        p = ctx.Process(target=workers.killable_writer, args=(str(path), trial + 1, str(log)))
        p.start()
        time.sleep(rng.uniform(0.03, 0.3))
        p.kill()  # SIGKILL
        p.join(timeout=30)
        assert p.exitcode == -9
    logged = read_log(log)
    assert len(logged) >= 20  # the kills landed while records were being written
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # index files are replaced atomically: never damaged
        mem = check_store(path, logged)
    with mem:
        report = mem.compact()  # drops the files of adds killed before their commit
        on_disk = {
            p.relative_to(path / "tensors").as_posix() for p in (path / "tensors").rglob("*.*")
        }
        used = {r[0] for r in mem.conn.execute("SELECT params FROM tasks WHERE params NOT NULL")}
        assert on_disk == used
        assert report["count"] == len(mem)
    with check_store(path, logged):  # and again after compact's rebuilt index
        pass


def test_corrupted_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "mem"
    with TaskMemory(path, dim=DIM) as mem:
        mem.add(workers.embedding(1))
    db = path / "tasks.sqlite"
    garbage = random.Random(1).randbytes(db.stat().st_size)
    db.write_bytes(garbage)
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    # The folder has a marker, so this was a store: damaged, not someone else's file.
    damaged = r"tasks.sqlite is damaged \(file is not a database\); nothing was changed\. Restore"
    with pytest.raises(StoreDamaged, match=damaged):
        TaskMemory(path)
    with pytest.raises(StoreDamaged, match=damaged):
        TaskMemory(path, read_only=True)
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()} == before


def test_foreign_files_are_refused_and_left_alone(tmp_path: Path) -> None:
    file = tmp_path / "model.pt"
    file.write_bytes(b"not a store")
    with pytest.raises(MnemetaError, match="is a file, not a task memory folder"):
        TaskMemory(file, dim=DIM)
    assert file.read_bytes() == b"not a store"

    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MnemetaError, match=r"is not a mnemeta task memory \(no mnemeta-task"):
        TaskMemory(other, dim=DIM)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]

    # Another program's SQLite database under our file name, in an otherwise empty folder.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    conn = sqlite3.connect(theirs / "tasks.sqlite")
    conn.execute("CREATE TABLE todo (what TEXT)")
    conn.commit()
    conn.close()
    before = (theirs / "tasks.sqlite").read_bytes()
    with pytest.raises(MnemetaError, match="it holds other tables: todo"):
        TaskMemory(theirs, dim=DIM)
    assert (theirs / "tasks.sqlite").read_bytes() == before

    # A marker that is not ours.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "mnemeta-task-memory.json").write_text('{"format": "something-else"}')
    with pytest.raises(MnemetaError, match="is not a mnemeta task memory marker"):
        TaskMemory(fake, dim=DIM)
    (fake / "mnemeta-task-memory.json").write_text("{half")
    with pytest.raises(MnemetaError, match="mnemeta-task-memory.json is damaged"):
        TaskMemory(fake)
    assert sorted(p.name for p in fake.iterdir()) == ["mnemeta-task-memory.json"]


def test_damaged_index_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "mem"
    with TaskMemory(path, dim=DIM) as mem:
        ids = mem.add_many(torch.stack([workers.embedding(s) for s in range(50)]))
    index = path / "index.faiss"
    data = bytearray(index.read_bytes())
    data[200] ^= 0xFF  # one flipped byte in the vectors
    index.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="checksum mismatch"):
        mem = TaskMemory(path)
    with mem:
        assert [h.id for h in mem.search(workers.embedding(7), k=1)] == [ids[7]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt index was saved: no warning now
        with TaskMemory(path) as mem:
            assert len(mem) == 50
    index.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="not a mnemeta index file"), TaskMemory(path) as mem:
        assert len(mem) == 50


def test_index_of_other_records_is_rebuilt(tmp_path: Path) -> None:
    """A saved index that covers records the database does not hold (restored from a copy)."""
    a, b = tmp_path / "a", tmp_path / "b"
    with TaskMemory(a, dim=DIM) as mem:
        mem.add_many(torch.stack([workers.embedding(s) for s in range(5)]))
        mem.export(b)
        mem.add_many(torch.stack([workers.embedding(s) for s in range(5, 10)]))
    with TaskMemory(b) as copy:  # the copy grows other records 6..10
        copy.add_many(torch.stack([workers.embedding(s) for s in range(100, 105)]))
    os.replace(a / "index.faiss", b / "index.faiss")  # ids 1..10, but 6..10 are other vectors
    with pytest.warns(RuntimeWarning, match="record 10 is not the one"), TaskMemory(b) as copy:
        assert copy.search(workers.embedding(103), k=1)[0].id == 9
    (b / "tasks.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (b / f"tasks.sqlite{suffix}").unlink(missing_ok=True)
    with pytest.raises(MnemetaError, match="no tasks.sqlite: the store is damaged"):
        TaskMemory(b)
