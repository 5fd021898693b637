"""The persistent task memory: past tasks with their embeddings, adapted weights and metrics.

    from mnemeta.store import TaskMemory, salvage
    with TaskMemory("runs/memory", dim=256) as mem:
        rid = mem.add(embedding, params={"head.weight": w}, info={"dataset": "omniglot"})
        hits = mem.search(query, k=5)          # [Hit(id, similarity, info, metrics), ...]
        weights = mem.params(hits[0].id)

    salvage("runs/memory", "runs/rescued")     # the readable records of a damaged store

A layer below the algorithms: it knows tensors, files and indexes, nothing of learners.
"""

from mnemeta.store.index import KINDS as INDEX_KINDS
from mnemeta.store.records import Hit, RecordNotFound, TaskRecord
from mnemeta.store.salvage import salvage
from mnemeta.store.schema import StoreDamaged
from mnemeta.store.task_memory import TaskMemory

__all__ = [
    "INDEX_KINDS",
    "Hit",
    "RecordNotFound",
    "StoreDamaged",
    "TaskMemory",
    "TaskRecord",
    "salvage",
]
