"""The catalogue of bad input: every case of the reliability issue, through the CLI.

Each case asserts what a user must get: a non-zero exit, one line on stderr that starts with
``error:`` (an uncaught exception would fail the test with its traceback), nothing
half-written (a refused run leaves no run folder), and the previous run untouched (its
checkpoint byte for byte). The runs are tiny (the embedded glyphs, an 8-channel Conv-4), so the
whole catalogue takes seconds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import mnemeta
from mnemeta.cli import main

TINY = [
    "backbone.hidden=8",
    "train.ways=5",
    "train.queries=2",
    "train.eval_every=0",
    "eval.episodes=10",
    "eval.batch_size=10",
]


def train_args(out: Path, *settings: str) -> list[str]:
    args = ["train", "demo_glyphs_protonet", "--out", str(out), "--no-progress", "--device", "cpu"]
    for item in [*TINY, *settings]:
        args += ["--set", item]
    return args


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """Run the CLI, assert a one-line refusal containing each of ``expected``; return it."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's refusals
        code = int(e.code or 0)
    err = capsys.readouterr().err.strip()
    assert code != 0, f"accepted: {argv}"
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-step run: the 'previous run' the cases must leave untouched."""
    out = tmp_path_factory.mktemp("finished") / "R"
    assert main(train_args(out, "train.steps=3")) == 0
    return out


# ------------------------------------------------------------------ run folders are protected


def test_a_rerun_into_a_finished_run_folder_is_refused_and_changes_nothing(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: sha(p) for p in finished_run.iterdir() if p.is_file()}
    refused(
        train_args(finished_run, "train.steps=2"),
        capsys,
        "already holds a finished run",
        "--resume",
        "--overwrite",
    )
    assert {p.name: sha(p) for p in finished_run.iterdir() if p.is_file()} == before


def test_overwrite_says_what_it_removes_and_keeps_foreign_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "R"
    assert main(train_args(out, "train.steps=2")) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*train_args(out, "train.steps=3"), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "--overwrite: removed checkpoint.pt, config.json" in err
    assert (out / "notes.txt").read_text() == "mine"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3


def test_a_folder_in_use_by_another_process_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnemeta.recipes.run_folder import RunFolder

    out = tmp_path / "R"
    with RunFolder(out):  # another run holds it (an flock conflicts within a process too)
        refused(train_args(out, "train.steps=2"), capsys, "is in use by another mnemeta process")
        assert f"PID {os.getpid()}" in refused(train_args(out, "train.steps=2"), capsys)
    assert main(train_args(out, "train.steps=2")) == 0  # released on exit


def test_a_stale_lock_and_the_temp_files_of_killed_writes_are_cleaned_up(tmp_path: Path) -> None:
    out = tmp_path / "R"
    out.mkdir()
    # What a kill -9 leaves: a lock file naming a dead process, a half-written checkpoint.
    (out / ".mnemeta.lock").write_text('{"pid": 999999999, "host": "x", "since": 0}\n')
    (out / ".checkpoint.pt.0123abcd.tmp").write_bytes(b"half")
    assert main(train_args(out, "train.steps=2")) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_checkpoints_follow_the_umask(finished_run: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    mode = stat.S_IMODE((finished_run / "checkpoint.pt").stat().st_mode)
    assert mode == 0o666 & ~umask  # not 0600: a team's shared runs stay readable


# ------------------------------------------------------- every value checked before any work


@pytest.mark.parametrize(
    "setting, message",
    [
        ("eval.episodes=0", "eval.episodes=0 must be at least 1"),
        ("eval.batch_size=0", "eval.batch_size=0 must be at least 1"),
        ("train.steps=-5", "train.steps=-5 must be at least 1"),
        ("train.steps=0", "train.steps=0 must be at least 1"),
        ("train.queries=0", "train.queries=0 must be at least 1"),
        ("train.lr=inf", "train.lr=inf must be a finite number"),
        ("train.lr=nan", "train.lr=nan must be a finite number"),
        ("train.lr=-1", "train.lr=-1 must be greater than 0"),
        ("train.checkpoint_every=0", "train.checkpoint_every=0 must be at least 1"),
        ("train.log_every=0", "train.log_every=0 must be at least 1"),
        ("train.meta_batch=0", "train.meta_batch=0 must be at least 1"),
        ("data.image_size=0", "data.image_size=0 must be at least 1"),
        ("train.optimizer=adamw", "train.optimizer='adamw' is unknown; choose one of adam"),
        ("train.grad_clip=-1", "train.grad_clip=-1 must be at least 0"),
    ],
)
def test_out_of_range_values_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, message: str
) -> None:
    refused(train_args(tmp_path / "R", setting), capsys, message)
    assert not (tmp_path / "R").exists()


def test_out_naming_a_file_or_a_path_under_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "F"
    f.write_text("")
    refused(train_args(f), capsys, "is a file, not a folder")
    refused(train_args(f / "x"), capsys, "is a file, not a folder")
    assert f.read_text() == ""


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders"
)
def test_an_unwritable_out_is_refused_before_the_data_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(train_args(locked / "R"), capsys, "cannot be written", "--out")
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------------ full disks


def test_no_room_for_a_checkpoint_is_refused_and_the_previous_one_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mnemeta.checkpoint as ck

    out = tmp_path / "R"
    assert main(train_args(out, "train.steps=2", "train.checkpoint_every=1")) == 0
    before = sha(out / "checkpoint.pt")

    class Usage:
        free = 1000

    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: Usage())
    resume = ["train", "--resume", str(out), "--set", "train.steps=4"]
    refused(resume, capsys, "disk full", "MB free", "the previous checkpoint is intact")
    assert sha(out / "checkpoint.pt") == before


def test_a_write_that_fails_on_a_full_disk_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mnemeta.checkpoint as ck

    def no_space(path: object, data: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "atomic_write_bytes", no_space)
    refused(train_args(tmp_path / "R", "train.steps=2"), capsys, "disk full", "checkpoint")


# --------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--ways", "0"], "--ways: expects an integer of at least 2, got 0"),
        (["--episodes", "0"], "--episodes: expects a positive integer, got 0"),
        (["--shots", "-1"], "--shots: expects a positive integer, got -1"),
        (["--batch-size", "0"], "--batch-size: expects a positive integer, got 0"),
        (["--episodes", "many"], "--episodes: expects a positive integer, got 'many'"),
    ],
)
def test_evaluate_refuses_nonsense_flags(
    finished_run: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    refused(["evaluate", str(finished_run / "checkpoint.pt"), *flags], capsys, message)


def test_evaluate_accepts_a_run_folder_and_an_out_folder_that_does_not_exist_yet(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "deeper" / "eval.json"
    assert main(["evaluate", str(finished_run), "--episodes", "5", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["evaluate", str(finished_run), "--episodes", "5", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "eval_test_5w1s_5.json").is_file()


def test_evaluate_on_a_folder_without_a_checkpoint_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(["evaluate", str(tmp_path)], capsys, "is a folder with no checkpoint.pt")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (os.urandom(4096), "is not a PyTorch file"),
        (b"PK\x03\x04" + os.urandom(300), "is truncated or corrupt"),
    ],
)
def test_a_damaged_checkpoint_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(content)
    err = refused(["evaluate", str(bad)], capsys, message)
    assert "Python objects" not in err


def test_a_pickled_object_is_refused_in_a_whole_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "checkpoint.pt"
    torch.save({"format": "mnemeta-checkpoint", "x": zipfile.ZipInfo("a")}, bad)
    err = refused(["evaluate", str(bad)], capsys, "holds Python objects", "could run code")
    assert err.endswith("`mnemeta train`")


# ---------------------------------------------------------------------------------- the CLI


def test_list_into_a_closed_pipe_ends_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(mnemeta.__file__).parents[1])}
    out = subprocess.run(
        f"{sys.executable} -m mnemeta.cli list | head -2",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert len(out.stdout.splitlines()) == 2
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


def test_bad_flags_get_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "demo_glyphs_protonet", "--steps", "3"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert err.startswith("error: mnemeta: unrecognized arguments: --steps 3")


def test_resume_and_overwrite_together_are_refused(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(
        ["train", "--resume", str(finished_run), "--overwrite"],
        capsys,
        "--resume continues a run and --overwrite replaces it",
    )


def test_resuming_a_finished_run_says_how_to_train_further(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(["train", "--resume", str(finished_run)], capsys, "already at step 3 of 3")


# ------------------------------------------------------------------------ the task memory
# (each case in depth, with every kind of damage and subcommand: tests/test_cli_memory.py
# and tests/store/test_damage.py; here one of each, as a user meets them)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(Path(__file__).parent / "store"))
    from store_damage import make_store

    path = tmp_path_factory.mktemp("store") / "M"
    make_store(path, n=200)
    return path


def _hashes(folder: Path) -> dict[str, str]:
    """Every file's hash, but SQLite's -wal/-shm side files, which any open may create."""
    return {
        str(p.relative_to(folder)): sha(p)
        for p in folder.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


@pytest.mark.parametrize("kind", ["table_page", "index_page", "random_bytes"])
def test_a_damaged_task_memory_is_named_as_such_and_left_as_it_is(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    import shutil

    from store_damage import damage

    copy = tmp_path / "M"
    shutil.copytree(store, copy)
    damage(copy, kind)
    before = _hashes(copy)
    for command in (["info"], ["compact"]):
        refused(["memory", *command, str(copy)], capsys, "damaged")
    assert _hashes(copy) == before


def test_memory_add_into_a_foreign_folder_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    emb = tmp_path / "e.safetensors"
    save_file({"e": torch.ones(8)}, emb)
    refused(["memory", "add", str(foreign), "--embedding-file", str(emb)], capsys)
    assert sorted(p.name for p in foreign.rglob("*")) == ["cat.jpg"]


def test_memory_export_into_itself_is_refused(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _hashes(store)
    refused(["memory", "export", str(store), str(store / "sub")], capsys, "inside the task memory")
    assert _hashes(store) == before


def test_evaluate_with_a_missing_data_folder_names_the_flag_evaluate_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A checkpoint of an Omniglot run (a glyphs run's, relabelled: evaluation needs the
    # data before the weights), evaluated with --data pointing nowhere.
    import json

    from mnemeta.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(Path(__file__).parent / "fixtures" / "v0_1" / "protonet.pt")
    config = json.loads(state["config"])
    config["data"]["dataset"] = "omniglot"
    save_checkpoint(tmp_path / "checkpoint.pt", {**state, "config": json.dumps(config)})
    err = refused(
        ["evaluate", str(tmp_path), "--data", str(tmp_path / "missing"), "--episodes", "2"],
        capsys,
        "does not exist; pass --data PATH",
    )
    assert "--set data.root" not in err  # a flag evaluate does not have
