"""A damaged tasks.sqlite (issue 11): found on open and by compact, refused with StoreDamaged,
left as it was, and what is readable copied out by salvage into a healthy store."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import torch

from mnemeta.errors import StoreError
from mnemeta.store import StoreDamaged, TaskMemory, salvage
from mnemeta.store import records as records_mod
from mnemeta.store.maintenance import STALE_TMP_S

sys.path.insert(0, str(Path(__file__).parent))
import store_damage as damage

N = damage.N


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "mem"
    damage.make_store(path)
    return path


def damaged_copy(pristine: Path, tmp_path: Path, kind: str) -> Path:
    path = tmp_path / kind
    shutil.copytree(pristine, path)
    damage.damage(path, kind)
    return path


def hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))  # SQLite's side files
    }


def same_record(copy: TaskMemory, rid: int) -> bool:
    rec = copy.get(rid)
    want = {"w": torch.full((2,), float(rid))} if rid % 50 == 0 else {}
    return (
        torch.equal(rec.embedding, damage.embedding(rid - 1))
        and rec.info == {"i": rid}
        and rec.params.keys() == want.keys()
        and all(torch.equal(rec.params[k], want[k]) for k in want)
    )


@pytest.mark.parametrize(
    ("kind", "found"),
    [
        ("table_page", r"damaged \(SQLite's quick_check: On tree page \d+ cell \d+: "),
        ("index_page", r"damaged \(SQLite's quick_check: On tree page \d+ cell \d+: "),
        ("truncated", r"damaged \(truncated: \d+ of its \d+ pages are left\)"),
        ("random_bytes", r"damaged \(file is not a database\)"),
    ],
)
@pytest.mark.parametrize("read_only", [False, True])
def test_open_finds_damage_and_changes_nothing(
    pristine: Path, tmp_path: Path, kind: str, found: str, read_only: bool
) -> None:
    path = damaged_copy(pristine, tmp_path, kind)
    before = hashes(path)
    with pytest.raises(StoreDamaged, match=found) as e:
        TaskMemory(path, read_only=read_only)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path / "tasks.sqlite"))
    assert "nothing was changed. Restore the store from a backup" in msg
    # Export is offered where SQLite can read pages at all.
    assert ("mnemeta memory export" in msg) == (kind != "random_bytes")
    assert hashes(path) == before


def test_compact_runs_integrity_check_before_removing_anything(
    pristine: Path, tmp_path: Path
) -> None:
    """An index entry that no longer matches its row passes quick_check (the store opens and
    searches) but not integrity_check: compact refuses, and removes no file."""
    path = damaged_copy(pristine, tmp_path, "index_entry")
    orphan = path / "tensors" / "00000" / "9999-0123abcd.safetensors"
    orphan.write_bytes(b"an orphan compact would remove")
    stale = path / ".index.faiss.0123abcd.tmp"
    with TaskMemory(path) as mem:
        assert len(mem) == N and mem.search(damage.embedding(9), k=1)[0].id == 10
        stale.write_bytes(b"a killed write's temp file")
        old = time.time() - STALE_TMP_S - 60
        os.utime(stale, (old, old))
        before = hashes(path)
        with pytest.raises(StoreDamaged, match=r"damaged \(SQLite's integrity_check: row 100 "):
            mem.compact()
    assert hashes(path) == before and orphan.exists() and stale.exists()


def test_export_never_writes_a_damaged_copy(pristine: Path, tmp_path: Path) -> None:
    """The backup API copies pages as they are; the copy is checked before it is renamed into
    place, and refused (no folder left) when integrity_check fails."""
    path = damaged_copy(pristine, tmp_path, "index_entry")
    mem = TaskMemory(path, read_only=True)
    with mem, pytest.raises(StoreDamaged, match="integrity_check: row 100 missing"):
        mem.export(tmp_path / "copy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index_entry"]
    report = salvage(path, tmp_path / "copy")  # salvage rebuilds it, whole
    assert report["count"] == N and report["lost_ids"] == [] and "row 100" in report["damage"]
    with TaskMemory(tmp_path / "copy") as copy:
        assert copy.compact()["count"] == N


@pytest.mark.parametrize("kind", ["table_page", "index_page", "truncated"])
def test_salvage_copies_what_is_readable(pristine: Path, tmp_path: Path, kind: str) -> None:
    path = damaged_copy(pristine, tmp_path, kind)
    before = hashes(path)
    report = salvage(path, tmp_path / "rescued")
    assert hashes(path) == before  # the source is only read
    lost = report["lost_ids"]
    assert report["expected"] == N and report["count"] == N - len(lost)
    assert report["params_lost_ids"] == [] and report["damage"]
    if kind == "index_page":
        assert lost == []  # the rows are intact: the copy is whole
    else:
        assert 0 < len(lost) < N
    if kind == "table_page":  # one leaf page: one run of ids
        assert lost == list(range(lost[0], lost[-1] + 1))
    with TaskMemory(tmp_path / "rescued") as copy:
        ids = copy.ids()
        assert ids == [i for i in range(1, N + 1) if i not in lost]
        assert all(same_record(copy, rid) for rid in ids)
        assert copy.search(damage.embedding(ids[-1] - 1), k=1)[0].id == ids[-1]
        # Lost ids are never given again: their records may still be in a backup.
        assert copy.add(torch.ones(damage.DIM)) == N + 1
        assert copy.compact()["count"] == len(ids) + 1  # integrity_check passes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kind, "rescued"])


def test_salvage_keeps_records_whose_tensor_file_is_gone(pristine: Path, tmp_path: Path) -> None:
    path = damaged_copy(pristine, tmp_path, "table_page")
    with sqlite3.connect(f"{(path / 'tasks.sqlite').as_uri()}?mode=ro", uri=True) as conn:
        rel = conn.execute("SELECT params FROM tasks WHERE id = 50").fetchone()[0]
    (path / "tensors" / rel).unlink()
    report = salvage(path, tmp_path / "rescued")
    assert report["params_lost_ids"] == [50]
    with TaskMemory(tmp_path / "rescued", read_only=True) as copy:
        assert copy.params(50) == {} and copy.get(50).info == {"i": 50}


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("random_bytes", r"damaged \(file is not a database\) and none of its records can be"),
        ("emptied", r"damaged \(no such table: tasks\) and none of its records can be read"),
    ],
)
def test_salvage_says_when_nothing_can_be_read(
    pristine: Path, tmp_path: Path, kind: str, message: str
) -> None:
    path = tmp_path / kind
    shutil.copytree(pristine, path)
    if kind == "emptied":
        (path / "tasks.sqlite").write_bytes(b"")
    else:
        damage.damage(path, kind)
    with pytest.raises(StoreError, match=message):
        salvage(path, tmp_path / "rescued")
    assert sorted(p.name for p in tmp_path.iterdir()) == [kind]  # no copy, no temp folder


def test_salvage_of_a_healthy_store_is_a_whole_copy(pristine: Path, tmp_path: Path) -> None:
    report = salvage(pristine, tmp_path / "copy")
    assert report["count"] == N and report["lost_ids"] == [] and report["damage"] is None
    with TaskMemory(tmp_path / "copy", read_only=True) as copy:
        assert copy.store_id == TaskMemory(pristine, read_only=True).store_id
        assert all(same_record(copy, rid) for rid in (1, 50, N))


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            sqlite3.DatabaseError("database disk image is malformed"),
            r"tasks.sqlite is damaged \(database disk image is malformed, while reading a rec",
        ),
        (
            sqlite3.OperationalError("disk I/O error"),
            r"SQLite failed on .*tasks.sqlite while reading a record \(disk I/O error\); check",
        ),
    ],
)
def test_sqlite_errors_of_operations_become_store_errors(
    pristine: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: sqlite3.DatabaseError,
    message: str,
) -> None:
    """Damage SQLite meets after the open (a page the open's check read before it broke)."""

    def fail(*args: object) -> None:
        raise error

    with TaskMemory(pristine, read_only=True) as mem:
        monkeypatch.setattr(records_mod.Records, "get", fail)
        with pytest.raises(StoreError, match=message) as e:
            mem.get(1)
        assert isinstance(e.value, StoreDamaged) == ("malformed" in str(error))
