"""Child-process bodies for the durability tests (run in forked children, so not a test file).

Each child writes the ids of its *returned* adds to a log file with one ``os.write`` per line,
after the add returned: a line in the log is a record whose commit the caller was told about.
"""

from __future__ import annotations

import os
import random

import faiss
import torch

from mnemeta.store import TaskMemory

DIM = 32


def embedding(seed: int) -> torch.Tensor:
    """The embedding of task ``seed``: deterministic, so a reader can check it bit for bit."""
    return torch.randn(DIM, generator=torch.Generator().manual_seed(seed))


def params_for(seed: int, every: int) -> dict[str, torch.Tensor] | None:
    """Tasks whose seed is a multiple of ``every`` store parameters derived from the seed."""
    if seed % every:
        return None
    return {"head.weight": torch.full((4, 3), float(seed)), "step": torch.tensor([seed])}


def _single_threaded() -> None:
    # One thread: four writers on two cores, and no OpenMP pool inherited across fork.
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


def concurrent_adder(path: str, worker: int, n: int, log: str) -> None:
    """``n`` single adds, each its own transaction, racing with the other workers."""
    _single_threaded()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with TaskMemory(path) as mem:
        for i in range(n):
            seed = worker * 1_000_000 + i
            # One in ten with parameters: a tensor file costs two fsyncs (~5 ms on the CI disk)
            # under the write lock, and this test is about the rows.
            info = {"seed": seed, "every": 10}
            rid = mem.add(embedding(seed), params_for(seed, 10), info, {"i": float(i)})
            os.write(fd, f"{rid} {seed}\n".encode())
    os.close(fd)


def killable_writer(path: str, trial: int, log: str) -> None:
    """Add forever (single adds, batches, index flushes) until killed with SIGKILL."""
    _single_threaded()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    rng = random.Random(trial)
    mem = TaskMemory(path)
    seed = trial * 1_000_000
    while True:
        op = rng.random()
        if op < 0.55:
            rid = mem.add(embedding(seed), params_for(seed, 3), {"seed": seed, "every": 3})
            os.write(fd, f"{rid} {seed}\n".encode())
            seed += 1
        elif op < 0.9:
            seeds = list(range(seed, seed + rng.randint(2, 40)))
            ids = mem.add_many(
                torch.stack([embedding(s) for s in seeds]),
                [params_for(s, 3) for s in seeds],
                [{"seed": s, "every": 3} for s in seeds],
            )
            os.write(fd, "".join(f"{r} {s}\n" for r, s in zip(ids, seeds, strict=True)).encode())
            seed += len(seeds)
        else:
            mem.flush()  # index saves: kills land in the middle of some of them
