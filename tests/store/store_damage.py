"""Real damage to a task memory's tasks.sqlite, for the tests (not a test file).

Pages are found with SQLite's ``dbstat`` table (which b-tree owns which page), then their bytes
are overwritten in the file, as a failing disk or a stray write would. The store is closed (and
its WAL checkpointed into tasks.sqlite) before, so the damage is what a later open reads.
"""

from __future__ import annotations

import random
import sqlite3
import struct
from pathlib import Path

import pytest
import torch

from mnemeta.store import TaskMemory

DIM = 8
N = 600  # 6 batches of 100: ~15 table leaf pages, several index pages, 6 distinct times
KINDS = ("table_page", "index_page", "index_entry", "truncated", "random_bytes")


def embedding(i: int) -> torch.Tensor:
    return torch.randn(DIM, generator=torch.Generator().manual_seed(i))


def make_store(path: Path, n: int = N) -> None:
    """``n`` records (ids 1..n, embedding(i - 1), info {"i": i}, params on every 50th)."""
    with TaskMemory(path, dim=DIM) as mem:
        for start in range(0, n, 100):
            rows = range(start, min(n, start + 100))
            mem.add_many(
                torch.stack([embedding(i) for i in rows]),
                [
                    {"w": torch.full((2,), float(i + 1))} if (i + 1) % 50 == 0 else None
                    for i in rows
                ],
                [{"i": i + 1} for i in rows],
            )
    conn = sqlite3.connect(path / "tasks.sqlite")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def pages(db: Path) -> dict[tuple[str, str], list[int]]:
    """(b-tree name, "leaf" or "internal") -> its page numbers, ascending."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, pagetype, pageno FROM dbstat").fetchall()
    except sqlite3.OperationalError:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
        pytest.skip("this SQLite has no dbstat table to find pages with")
    finally:
        conn.close()
    out: dict[tuple[str, str], list[int]] = {}
    for name, kind, page in rows:
        out.setdefault((name, kind), []).append(page)
    return {k: sorted(v) for k, v in out.items()}


def overwrite_page(db: Path, page: int, seed: int = 0) -> None:
    """Random bytes over a page, but for its first 8 bytes (the page type stays)."""
    size = 4096
    data = bytearray(db.read_bytes())
    start = (page - 1) * size
    data[start + 8 : start + size] = random.Random(seed).randbytes(size - 8)
    db.write_bytes(bytes(data))


def damage(path: Path, kind: str) -> None:
    """Damage ``path``/tasks.sqlite in one of :data:`KINDS` ways."""
    db = path / "tasks.sqlite"
    if kind == "table_page":
        leaves = pages(db)[("tasks", "leaf")]
        overwrite_page(db, leaves[len(leaves) // 2])
    elif kind == "index_page":
        overwrite_page(db, pages(db)[("tasks_by_time", "leaf")][0])
    elif kind == "index_entry":
        shift_index_time(db)
    elif kind == "truncated":
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    elif kind == "random_bytes":
        db.write_bytes(random.Random(1).randbytes(db.stat().st_size))
    else:
        raise ValueError(kind)


def shift_index_time(db: Path) -> None:
    """Move one time-index entry's time up by one ulp: every page stays well-formed and in
    order (quick_check passes), but the entry no longer matches its row (integrity_check)."""
    conn = sqlite3.connect(db)
    t, rid = conn.execute("SELECT time, id FROM tasks WHERE id = 100").fetchone()
    conn.close()
    data = bytearray(db.read_bytes())
    # An index record: its header (3 bytes: its size, REAL, 8-bit int), the time (big-endian
    # double), the rowid. A row's record has another header before the same time.
    needle = b"\x03\x07\x01" + struct.pack(">d", t) + bytes([rid])
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "the index entry must be found once"
    at += 3
    (bits,) = struct.unpack(">Q", data[at : at + 8])
    data[at : at + 8] = struct.pack(">Q", bits + 1)  # the next double up (t > 0)
    db.write_bytes(bytes(data))
