"""TaskMemory durability as figures: concurrent adds, kill -9 during writes, damaged files.

    nice -n 10 python benchmarks/task_memory_durability.py [--procs 4] [--adds 1000] \
        [--kills 20] [--out benchmarks/results/task_memory_durability.json]

The same three checks as ``tests/store/test_durability.py``, with the worker bodies of
``tests/store/store_workers.py`` (imported, not copied), but measured and written down instead
of asserted:

1. ``--procs`` processes each make ``--adds`` single ``TaskMemory.add`` calls (one transaction
   each; one add in ten stores a small params dict, so tensor files are written under the write
   lock too) on one fresh store at the same time. Reported: records and distinct ids after,
   wall time (starting the children, opening the store, the adds, closing it) and adds/s, the
   same over the span of the records' time stamps (the adds alone), whether every record reads
   back bit for bit, the index size against the row count, and whether a search for every
   100th record's embedding returns that record first. (The store keeps no count of its busy
   retries, so none is reported.)
2. ``--kills`` times, a writer (single adds, batches of 2-40, index flushes in a random mix)
   is SIGKILLed after a random delay. Each child appends the id of every add that *returned*
   to a log with one ``os.write`` per line. Then the store is reopened (warnings recorded) and
   every logged id is read back and compared with what was added; last, ``compact()`` removes
   the tensor files of adds that were killed before their commit.
3. Damaged and foreign files: random bytes over tasks.sqlite, a folder holding an unrelated
   file, a truncated index.faiss (and extras: a file passed as the folder, another program's
   SQLite database under our name, and since issue 11 random bytes over one table leaf page
   and over one index leaf page of tasks.sqlite, and tasks.sqlite cut in half, each also
   salvaged). Reported: the error or warning (first line), whether every file that was in the
   folder is byte-identical (SHA-256) afterwards, and what a salvage copied and lost.

Children are forked from a forkserver that has imported torch, FAISS and mnemeta already (as in
the tests), so they start in milliseconds; every child runs torch and FAISS on one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import faiss
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "store"))
import store_damage
import store_workers as workers

from common import header
from mnemeta.errors import MnemetaError
from mnemeta.store import TaskMemory, salvage
from mnemeta.store import index as index_mod

DIM = workers.DIM


def read_log(path: Path) -> list[tuple[int, int]]:
    """(record id, seed) for every complete line (a kill may cut the last line short)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            rid, seed = line.split()
            out.append((int(rid), int(seed)))
    return out


def db_rows(path: Path) -> list[tuple[int, float, str | None]]:
    conn = sqlite3.connect(path / "tasks.sqlite")
    try:
        return conn.execute("SELECT id, time, params FROM tasks ORDER BY id").fetchall()
    finally:
        conn.close()


def intact(mem: TaskMemory, rid: int, seed: int | None) -> bool:
    """Record ``rid`` reads back with the embedding and params its seed determines."""
    try:
        rec = mem.get(rid)
    except MnemetaError:
        return False
    s = rec.info["seed"]
    if seed is not None and s != seed:
        return False
    want = workers.params_for(s, rec.info["every"]) or {}
    return (
        torch.equal(rec.embedding, workers.embedding(s))
        and rec.params.keys() == want.keys()
        and all(torch.equal(rec.params[k], want[k]) for k in want)
    )


def tensor_files(path: Path) -> set[str]:
    return {p.relative_to(path / "tensors").as_posix() for p in (path / "tensors").rglob("*.*")}


# ---------------------------------------------------------------------- 1. concurrent adds
def concurrent(ctx: Any, work: Path, procs: int, adds: int) -> dict[str, Any]:
    path = work / "concurrent"
    TaskMemory(path, dim=DIM).close()
    warm = ctx.Process(target=os.getpid)  # start the forkserver (imports torch) before timing
    warm.start()
    warm.join()
    logs = [work / f"concurrent{w}.log" for w in range(procs)]
    ps = [
        ctx.Process(target=workers.concurrent_adder, args=(str(path), w, adds, str(logs[w])))
        for w in range(procs)
    ]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join(timeout=300)
    wall = time.perf_counter() - t0
    exitcodes = [p.exitcode for p in ps]
    logged = [e for log in logs for e in read_log(log)]
    seeds = dict(logged)
    rows = db_rows(path)
    ids = [r[0] for r in rows]
    times = [r[1] for r in rows]
    window = max(times) - min(times) if times else 0.0
    with TaskMemory(path) as mem:
        index_size = mem.info()["index_state"]["records"]
        readable = sum(intact(mem, rid, seeds.get(rid)) for rid in ids)
        every_100th = [rid for rid in ids if rid % 100 == 0]
        top1 = sum(
            mem.search(workers.embedding(seeds[rid]), k=1)[0].id == rid for rid in every_100th
        )
    n = procs * adds
    return {
        "processes": procs,
        "adds_per_process": adds,
        "params_every": 10,
        "exitcodes": exitcodes,
        "ids_returned": len(logged),
        "distinct_ids_returned": len(seeds),
        "records_after": len(rows),
        "distinct_ids": len(set(ids)),
        "ids_are_1_to_n": ids == list(range(1, n + 1)),
        "tensor_files": len(tensor_files(path)),
        "rows_with_params": sum(r[2] is not None for r in rows),
        "records_intact": readable,
        "wall_seconds": round(wall, 2),
        "adds_per_second": round(n / wall),
        # From the first record's time stamp to the last one's: the adds alone.
        "add_window_seconds": round(window, 2),
        "adds_per_second_in_window": round(n / window) if window else None,
        "busy_retries": None,  # TaskMemory does not count them (retry_busy keeps no counter)
        "index_size": index_size,
        "index_size_equals_rows": index_size == len(rows),
        "search_every_100th": len(every_100th),
        "search_every_100th_top1": top1,
    }


# ---------------------------------------------------------------------- 2. kill -9
def kills(ctx: Any, work: Path, trials: int, lo: float, hi: float) -> dict[str, Any]:
    path = work / "killed"
    TaskMemory(path, dim=DIM).close()
    log = work / "killed.log"
    rng = random.Random(0)
    t0 = time.perf_counter()
    exitcodes, delays = [], []
    for trial in range(1, trials + 1):
        p = ctx.Process(target=workers.killable_writer, args=(str(path), trial, str(log)))
        p.start()
        delay = rng.uniform(lo, hi)
        time.sleep(delay)
        p.kill()  # SIGKILL
        p.join(timeout=30)
        exitcodes.append(p.exitcode)
        delays.append(round(delay, 3))
    t_kills = time.perf_counter() - t0
    logged = read_log(log)
    seeds = dict(logged)
    per_trial = [0] * trials
    for _, seed in logged:
        per_trial[seed // 1_000_000 - 1] += 1
    try:
        saved = index_mod.read_header(path / "index.faiss")
        saved_index = {"records": saved["ntotal"], "max_id": saved["max_id"]}
    except index_mod.IndexFileError as e:
        saved_index = {"records": 0, "max_id": 0, "note": str(e)}
    temp_files = sorted(p.name for p in path.iterdir() if p.name.endswith(".tmp"))

    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mem = TaskMemory(path)
    reopen = time.perf_counter() - t1
    with mem:
        state = mem.info()["index_state"]
        rows = db_rows(path)
        ids = [r[0] for r in rows]
        logged_readable = sum(intact(mem, rid, seed) for rid, seed in seeds.items())
        rows_intact = sum(intact(mem, rid, None) for rid in ids)
        queries = torch.stack([mem.get(i).embedding for i in ids])
        top = [hits[0].id for hits in mem.search_many(queries, k=1)]
        used = {r[2] for r in rows if r[2] is not None}
        on_disk = tensor_files(path)
        # The files of adds killed before their commit are orphans; compact() removes them.
        compacted = mem.compact()
        after_compact = tensor_files(path) == used
    return {
        "kills": trials,
        "delay_seconds": [lo, hi],
        "exitcodes": sorted(set(exitcodes)),
        "killed_by_sigkill": sum(c == -9 for c in exitcodes),
        "trials_with_committed_adds": sum(c > 0 for c in per_trial),
        "committed_per_trial": per_trial,
        "committed_ids_reported": len(logged),
        "committed_ids_readable": logged_readable,
        "rows": len(rows),
        "rows_not_reported": len(set(ids) - set(seeds)),
        "rows_intact": rows_intact,
        "saved_index_before_reopen": saved_index,
        "index_size": state["records"],
        "index_max_id": state["max_id"],
        "index_size_equals_rows": state["records"] == len(rows),
        "caught_up_on_reopen": state["records"] - saved_index["records"],
        "index_rebuilt": any("rebuilding the index" in str(w.message) for w in caught),
        "reopen_warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "search_top1_is_self": sum(a == b for a, b in zip(top, ids, strict=True)),
        "orphan_tensor_files": len(on_disk - used),
        "missing_tensor_files": len(used - on_disk),
        "leftover_temp_files": len(temp_files),
        "compact_removed_files": compacted["removed_files"],
        "tensor_files_match_rows_after_compact": after_compact,
        "kill_loop_seconds": round(t_kills, 2),
        "reopen_seconds": round(reopen, 3),
    }


# ---------------------------------------------------------------------- 3. damaged files
def hashes(root: Path) -> dict[str, str]:
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def diff(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    return {
        "changed": sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
        "removed": sorted(before.keys() - after.keys()),
        "added": sorted(after.keys() - before.keys()),
    }


def attempt(target: Path, work: Path, **kwargs: Any) -> dict[str, Any]:
    """Open ``target``; the error or warnings (first line, scratch path shortened), hashes."""
    before = hashes(target)
    out: dict[str, Any] = {"open": kwargs}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mem = TaskMemory(target, **kwargs)
        except MnemetaError as e:
            out["error"] = str(e).splitlines()[0].replace(str(work), "<tmp>")
        else:
            with mem:
                out["opened_records"] = len(mem)
                out["search_ok"] = mem.search(workers.embedding(7), k=1)[0].info["seed"] == 7
    out["warnings"] = [str(w.message).splitlines()[0].replace(str(work), "<tmp>") for w in caught]
    after = hashes(target)
    changes = diff(before, after)
    out["files_before"] = len(before)
    # Every file that was there still is, byte for byte (SQLite may add its -wal/-shm files).
    out["existing_bytes_unchanged"] = not changes["changed"] and not changes["removed"]
    out |= {k: v for k, v in changes.items() if v}
    return out


def small_store(path: Path, n: int) -> None:
    with TaskMemory(path, dim=DIM) as mem:
        seeds = list(range(n))
        mem.add_many(
            torch.stack([workers.embedding(s) for s in seeds]),
            [workers.params_for(s, 10) for s in seeds],
            [{"seed": s, "every": 10} for s in seeds],
        )


def damaged(work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}

    path = work / "garbage_db"
    small_store(path, 20)
    db = path / "tasks.sqlite"
    db.write_bytes(random.Random(1).randbytes(db.stat().st_size))
    out["tasks.sqlite overwritten with random bytes"] = [
        attempt(path, work),
        attempt(path, work, read_only=True),
    ]

    other = work / "results"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    out["folder with an unrelated file"] = [attempt(other, work, dim=DIM)]

    path = work / "truncated_index"
    small_store(path, 50)
    index = path / "index.faiss"
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2])
    out["index.faiss truncated to half"] = [
        attempt(path, work, read_only=True),  # writes nothing: rebuilt in memory only
        attempt(path, work),  # rebuilds the index from tasks.sqlite and saves it
        attempt(path, work),  # the saved rebuild is accepted
    ]

    file = work / "model.pt"
    file.write_bytes(b"not a store")
    out["extra: a file passed as the folder"] = [attempt(file, work, dim=DIM)]

    theirs = work / "theirs"
    theirs.mkdir()
    conn = sqlite3.connect(theirs / "tasks.sqlite")
    conn.execute("CREATE TABLE todo (what TEXT)")
    conn.commit()
    conn.close()
    out["extra: another program's SQLite as tasks.sqlite"] = [attempt(theirs, work, dim=DIM)]

    # Since issue 11: damage inside tasks.sqlite that SQLite only meets when a query reaches
    # the page (the store used to open and report itself healthy).
    for name, what in (
        ("table_page", "one table leaf page of tasks.sqlite overwritten with random bytes"),
        ("index_page", "one index leaf page of tasks.sqlite overwritten with random bytes"),
        ("half_db", "tasks.sqlite cut to half its size"),
    ):
        path = work / name
        small_store(path, 600)
        conn = sqlite3.connect(path / "tasks.sqlite")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        db = path / "tasks.sqlite"
        if name == "half_db":
            db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
        else:
            tree = "tasks" if name == "table_page" else "tasks_by_time"
            leaves = store_damage.pages(db)[(tree, "leaf")]
            store_damage.overwrite_page(db, leaves[len(leaves) // 2])
        for side in ("-wal", "-shm"):  # left by dbstat's reader; the WAL is empty (checkpointed)
            Path(f"{db}{side}").unlink(missing_ok=True)
        out[f"extra: {what}"] = [
            attempt(path, work),
            attempt(path, work, read_only=True),
            salvaged(path, work / f"{name}_salvaged", work),
        ]
    return out


def salvaged(path: Path, dest: Path, work: Path) -> dict[str, Any]:
    """salvage() of a damaged store: records copied and lost, and whether every copied record
    is the one that was added (embedding, params, info), and the source unchanged."""
    before = hashes(path)
    report = salvage(path, dest)
    with TaskMemory(dest, read_only=True) as copy:
        ids = copy.ids()
        right = sum(intact(copy, rid, rid - 1) for rid in ids)
    return {
        "salvage": True,
        "records": report["expected"],
        "copied": report["count"],
        "copied_intact": right,
        "lost": len(report["lost_ids"]),
        "params_lost": len(report["params_lost_ids"]),
        "damage": str(report["damage"]).replace(str(work), "<tmp>"),
        "source_bytes_unchanged": hashes(path) == before,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--adds", type=int, default=1000, help="single adds per process")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--kill-min", type=float, default=0.05, help="seconds before the kill")
    ap.add_argument("--kill-max", type=float, default=0.5)
    ap.add_argument("--workdir", help="scratch folder (default: a temp folder, removed after)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mnemeta.store"])
    scratch = Path(args.workdir or tempfile.mkdtemp(prefix="mnemeta-durability-"))
    scratch.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        res_c = concurrent(ctx, scratch, args.procs, args.adds)
        print(f"concurrent: {json.dumps(res_c)}", flush=True)
        res_k = kills(ctx, scratch, args.kills, args.kill_min, args.kill_max)
        print(f"kill -9: {json.dumps(res_k)}", flush=True)
        res_d = damaged(scratch)
        print(f"damaged: {json.dumps(res_d)}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    out = {
        **header(),
        "faiss": faiss.__version__,
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "nice": os.nice(0),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "concurrent_adds": res_c,
        "kill_9": res_k,
        "damaged_files": res_d,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
