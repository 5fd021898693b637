"""`mnemeta memory ...`: in-process, checking output, exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mnemeta.cli import main
from mnemeta.store import TaskMemory


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
    code, out, _ = run(["compact", mem], capsys)
    assert code == 0 and "6 tasks, removed 0 orphan file(s)" in out
    with TaskMemory(tmp_path / "copy", read_only=True) as copy:
        assert torch.equal(copy.params(1)["head.weight"], torch.ones(2, 3))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "{tmp}/nowhere"], "no task memory at {tmp}/nowhere; create one with"),
        (["info", "{tmp}"], "is not a mnemeta task memory (no mnemeta-task-memory.json)"),
        (["search", "{mem}", "--id", "99"], "no record 99 in the task memory"),
        (["search", "{mem}", "--query-file", "{tmp}/q.st"], "--query-file {tmp}/q.st does not"),
        (["search", "{mem}", "--query-file", "{two}"], "holds 2 tensors (a, b); name the one"),
        (["search", "{mem}", "--query-file", "{two}", "--key", "c"], "has no tensor 'c'"),
        (["search", "{mem}", "--query-file", "{params}"], "holds shape (2, 3); this memory"),
        (["search", "{mem}", "--id", "1", "--k", "0"], "--k 0 must be at least 1"),
        (["add", "{mem}", "--embedding-file", "{one}", "--info", "{{x"], "--info is not valid"),
        (["add", "{mem}", "--embedding-file", "{one}", "--metrics", "[1]"], "must be a JSON obj"),
        (["add", "{mem}", "--embedding-file", "{params}"], "got shape (2, 3); this task"),
        (["add", "{mem}", "--embedding-file", "{one}", "--index", "hnsw"], "index='flat', not"),
        (["add", "{mem}", "--embedding-file", "{mem}/tasks.sqlite"], "not a readable safetens"),
        (["export", "{mem}", "{mem}"], "exists and is not empty; export into a new folder"),
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
    names = {"tmp": tmp_path, "mem": mem, **{k: v for k, v in files.items()}}
    before = {p.name: p.read_bytes() for p in mem.iterdir() if p.is_file()}
    code, out, err = run([a.format(**names) for a in args], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "\n" not in err
    assert message.format(**names) in err
    # Unchanged, but for the -wal/-shm files that SQLite keeps beside a WAL database.
    after = {p.name: p.read_bytes() for p in mem.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if not k.endswith(("-wal", "-shm"))} == before
