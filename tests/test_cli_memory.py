"""`mnemeta memory ...`: in-process, checking output, exit codes and one-line errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mnemeta.cli import main
from mnemeta.store import TaskMemory

sys.path.insert(0, str(Path(__file__).parent / "store"))
import store_damage as damage

# Python's words, which a CLI user cannot act on: keyword arguments and calls.
PYTHON_WORDS = re.compile(r"\b(read_only|create|dim|index|k|params|embeddings|queries)=|\w\(\)")


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["memory", *args])
    out, err = capsys.readouterr()
    return code, out, err.strip()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g)
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("one", "many", "params", "two")}
    save_file({"embedding": x[0]}, paths["one"])
    save_file({"embedding": x[1:]}, paths["many"])
    save_file({"head.weight": torch.ones(2, 3)}, paths["params"])
    save_file({"a": x[0], "b": x[1]}, paths["two"])
    paths["nan"] = tmp_path / "nan.safetensors"
    save_file({"embedding": torch.full((8,), float("nan"))}, paths["nan"])
    paths["zero"] = tmp_path / "zero.safetensors"
    save_file({"embedding": torch.zeros(2, 8)}, paths["zero"])
    paths["dim4"] = tmp_path / "dim4.safetensors"
    save_file({"embedding": torch.ones(4)}, paths["dim4"])
    paths["none"] = tmp_path / "none.safetensors"
    save_file({"embedding": torch.ones(0, 8)}, paths["none"])
    return paths


def test_add_info_search_export_compact(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    mem = str(tmp_path / "mem")
    code, out, _ = run(
        [
            "add", mem, "--embedding-file", str(files["one"]), "--params-file",
            str(files["params"]), "--info", '{"dataset": "omniglot"}', "--metrics",
            '{"acc_after": 0.9}',
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert out.splitlines() == [
        f"created task memory {mem} (dim 8, index flat)",
        "added 1 task: id 1 (1 in all)",
    ]
    code, out, _ = run(["add", mem, "--embedding-file", str(files["many"]), "--json"], capsys)
    assert code == 0 and json.loads(out)["ids"] == [2, 3, 4, 5, 6]

    code, out, _ = run(["info", mem], capsys)
    assert code == 0
    assert "  records  6" in out and "  dim      8 (cosine similarity)" in out
    assert "  index    flat: 6 records indexed" in out
    code, out, _ = run(["info", mem, "--json"], capsys)
    assert json.loads(out)["count"] == 6

    code, out, _ = run(["search", mem, "--query-file", str(files["one"]), "--k", "2"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "query 1: 2 most similar of 6 tasks"
    assert lines[2].split()[:3] == ["1", "1", "1.0000"] and '"dataset": "omniglot"' in lines[2]
    code, out, _ = run(["search", mem, "--id", "1", "--k", "3", "--json"], capsys)
    hits = json.loads(out)[0]
    assert code == 0 and len(hits) == 3 and 1 not in [h["id"] for h in hits]

    code, out, _ = run(["export", mem, str(tmp_path / "copy")], capsys)
    assert code == 0 and out.startswith(f"exported 6 tasks to {tmp_path / 'copy'} (")
    deep = tmp_path / "backups" / "2026" / "copy"  # missing parents are made
    code, out, _ = run(["export", mem, str(deep)], capsys)
    assert code == 0 and out.startswith(f"exported 6 tasks to {deep} (")
    code, out, _ = run(["compact", mem], capsys)
    assert code == 0 and "6 tasks, removed 0 orphan file(s)" in out
    with TaskMemory(tmp_path / "copy", read_only=True) as copy:
        assert torch.equal(copy.params(1)["head.weight"], torch.ones(2, 3))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "{tmp}/nowhere"], "no task memory at {tmp}/nowhere; create one with"),
        (["info", "{tmp}"], "is not a mnemeta task memory (no mnemeta-task-memory.json)"),
        (["info", "{tmp}/empty"], "empty is not a mnemeta task memory (no mnemeta-task-memory"),
        (["compact", "{tmp}/empty"], "create one with `mnemeta memory add PATH --embedding-file"),
        (["info", "{tmp}/stray.txt"], "stray.txt is a file, not a task memory folder"),
        (["search", "{mem}", "--id", "99"], "no record 99 in the task memory at {mem} (ids run"),
        (["search", "{mem}", "--id", "99"], "(ids run from 1 to 1); pass --id of a stored record"),
        (["search", "{mem}", "--query-file", "{nan}"], "{nan} holds NaN or infinite values"),
        (["search", "{mem}", "--query-file", "{dim4}"], "holds shape (4,); this memory holds"),
        (["search", "{mem}", "--query-file", "{tmp}/q.st"], "--query-file {tmp}/q.st does not"),
        (["search", "{mem}", "--query-file", "{two}"], "holds 2 tensors (a, b); name the one"),
        (["search", "{mem}", "--query-file", "{two}", "--key", "c"], "has no tensor 'c'"),
        (["search", "{mem}", "--query-file", "{params}"], "holds shape (2, 3); this memory"),
        (["search", "{mem}", "--id", "1", "--k", "0"], "--k 0 must be at least 1"),
        (["add", "{mem}", "--embedding-file", "{one}", "--info", "{{x"], "--info is not valid"),
        (["add", "{mem}", "--embedding-file", "{one}", "--metrics", "[1]"], "must be a JSON obj"),
        (["add", "{mem}", "--embedding-file", "{params}"], "{params} holds shape (2, 3); this"),
        (["add", "{mem}", "--embedding-file", "{dim4}"], "embeddings of dim 8: pass (8,) or (N,"),
        (["add", "{mem}", "--embedding-file", "{nan}"], "--embedding-file {nan} holds NaN or"),
        (["add", "{mem}", "--embedding-file", "{zero}"], "{zero} holds an all-zero vector"),
        (["add", "{tmp}/new", "--embedding-file", "{none}"], "holds shape (0, 8); pass (D,) or"),
        (["search", "{mem}", "--query-file", "{none}"], "{none} holds shape (0, 8); this memo"),
        (["add", "{mem}", "--embedding-file", "{one}", "--index", "hnsw"], "--index hnsw: {mem}"),
        (["add", "{mem}", "--embedding-file", "{one}", "--index", "hnsw"], "with index flat; drop"),
        (
            ["add", "{mem}", "--embedding-file", "{one}", "--metrics", '{{"acc": "high"}}'],
            "--metrics must map names to numbers; got 'acc': 'high'",
        ),
        (["add", "{mem}", "--embedding-file", "{mem}/tasks.sqlite"], "not a readable safetens"),
        (["add", "{tmp}", "--embedding-file", "{one}"], "is not a mnemeta task memory (no mnem"),
        (["export", "{mem}", "{mem}"], "{mem} is the task memory itself; nothing was exported"),
        (["export", "{mem}", "{mem}/sub"], "{mem}/sub is inside the task memory {mem}; nothing"),
        (["export", "{mem}", "{mem}/tensors/x"], "is inside the task memory {mem}; nothing was"),
        (["export", "{mem}", "{tmp}"], "{tmp} exists and is not empty; export into a new folder"),
        (["export", "{mem}", "{tmp}/stray.txt/copy"], "cannot create the folder for the copy at"),
    ],
)
def test_errors_are_one_line(
    args: list[str],
    message: str,
    tmp_path: Path,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    mem = tmp_path / "mem"
    with TaskMemory(mem, dim=8) as m:
        m.add(torch.ones(8))
    (tmp_path / "stray.txt").write_text("not a store")
    (tmp_path / "empty").mkdir()
    names = {"tmp": tmp_path, "mem": mem, **{k: v for k, v in files.items()}}
    before = tree(tmp_path)
    code, out, err = run([a.format(**names) for a in args], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "\n" not in err
    assert message.format(**names) in err
    assert not PYTHON_WORDS.search(err), f"a CLI message in Python's words: {err}"
    # Nothing created, nothing changed, but for the -wal/-shm files that SQLite keeps beside a
    # WAL database.
    assert tree(tmp_path) == before


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (SQLite's side files aside), with its content hash."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "folder"
        for p in sorted(root.rglob("*"))
        if not p.name.endswith(("-wal", "-shm"))
    }


@pytest.mark.parametrize("folder", ["theirs", "garbage"])
def test_add_into_a_foreign_folder_creates_nothing(
    folder: str, tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder with another program's tasks.sqlite (or random bytes under that name) may look
    like an interrupted creation; it is refused, and no tensors/ folder appears in it."""
    target = tmp_path / folder
    target.mkdir()
    if folder == "theirs":
        import sqlite3

        conn = sqlite3.connect(target / "tasks.sqlite")
        conn.execute("CREATE TABLE todo (what TEXT)")
        conn.commit()
        conn.close()
    else:
        (target / "tasks.sqlite").write_bytes(b"\x07" * 4096)
    before = tree(target)
    code, out, err = run(["add", str(target), "--embedding-file", str(files["one"])], capsys)
    assert code == 2 and out == "" and "\n" not in err
    assert "is not a mnemeta task memory" in err and "nothing was changed" in err
    assert tree(target) == before


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "mem"
    damage.make_store(path)
    return path


COMMANDS = {
    "info": ["info", "{mem}"],
    "info --json": ["info", "{mem}", "--json"],
    "search": ["search", "{mem}", "--id", "1"],
    "add": ["add", "{mem}", "--embedding-file", "{emb}"],
    "compact": ["compact", "{mem}"],
    "export": ["export", "{mem}", "{dest}"],
}


@pytest.mark.parametrize("kind", ["table_page", "index_page", "truncated", "random_bytes"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_damaged_store_is_one_line_and_exit_2(
    kind: str,
    command: str,
    pristine: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Real damage: every command says so on one line and exits 2, and changes nothing in the
    store; export copies out what is readable (exit 0 if that is everything)."""
    mem = tmp_path / "mem"
    shutil.copytree(pristine, mem)
    damage.damage(mem, kind)
    emb = tmp_path / "e.safetensors"
    save_file({"e": torch.ones(damage.DIM)}, emb)
    dest = tmp_path / "rescued"
    before = tree(mem)
    args = [a.format(mem=mem, emb=emb, dest=dest) for a in COMMANDS[command]]
    code, out, err = run(args, capsys)
    assert tree(mem) == before
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(("error: ", "warning: ")) and f"{mem}/tasks.sqlite is damaged (" in err
    assert not PYTHON_WORDS.search(err.replace("mnemeta.store.salvage", ""))
    if command != "export":
        assert code == 2 and out == "" and err.startswith("error: ")
        assert ("`mnemeta memory export" in err) == (kind != "random_bytes")
        assert not dest.exists()
    elif kind == "index_page":  # rows intact: a whole copy, and a warning
        assert code == 0 and out.startswith(f"exported {damage.N} tasks to {dest} (")
        assert err.startswith("warning: ") and f"the copy at {dest} is whole and healthy" in err
        with TaskMemory(dest, read_only=True) as copy:
            assert len(copy) == damage.N
    elif kind == "random_bytes":  # nothing readable: nothing written
        assert code == 2 and out == "" and "none of its records can be read" in err
        assert not dest.exists()
    else:
        assert code == 2 and out == "" and err.startswith("error: ")
        found = re.search(r"exported the ([\d,]+) readable records of 600 to (\S+), but", err)
        assert found and found[2] == str(dest) and "could not be read (ids " in err
        with TaskMemory(dest, read_only=True) as copy:
            assert len(copy) == int(found[1].replace(",", "")) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["mem", "e.safetensors", *(["rescued"] if dest.exists() else [])]
    )
