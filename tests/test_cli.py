"""Bad input at the command line: one line naming the problem and the fix, exit 2, no
traceback (unless --debug), and nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mnemeta.cli import main

TINY = [
    "--set",
    "backbone.hidden=8",
    "--set",
    "train.ways=5",
    "--set",
    "train.queries=2",
    "--set",
    "eval.episodes=10",
    "--set",
    "eval.val_episodes=10",
    "--set",
    "train.steps=2",
]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.step=3"], "unknown key 'train.step'; did you mean train.steps?"),
        (["--set", "train.steps=lots"], "train.steps expects an integer; got 'lots'"),
        (
            ["--set", "eval.ways=200"],
            "200-way episodes need 200 classes but split 'val' has only 50",
        ),
        (
            ["--set", "train.shots=15", "--set", "train.queries=10"],
            "shots + queries = 15 + 10 = 25 but class 'glyph00000' of split 'train' has only 20",
        ),
        (
            ["--set", "model.algorithm=mamal"],
            "model.algorithm='mamal' is unknown; did you mean 'maml'",
        ),
        (
            ["--device", "cuda:7"]
            if not __import__("torch").cuda.is_available()
            else ["--device", "tpu"],
            "device",
        ),
    ],
)
def test_bad_training_input(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, err = run(["train", "demo_glyphs_protonet", "--out", str(out), *args], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()  # nothing half-written


def test_missing_omniglot_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, err = run(
        ["train", "protonet_omniglot_5w1s", "--data", str(tmp_path / "nowhere"), "--out", str(out)],
        capsys,
    )
    assert code == 2 and "nowhere" in err and "\n" not in err
    assert not out.exists()


def test_wrong_omniglot_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data" / "something_else").mkdir(parents=True)
    code, err = run(
        [
            "train",
            "protonet_omniglot_5w1s",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2 and "images_background" in err and "\n" not in err


def test_checkpoint_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "demo_glyphs_protonet", "--out", str(out), "--no-progress", *TINY]) == 0
    capsys.readouterr()
    ckpt = out / "checkpoint.pt"
    # resumed with another config
    code, err = run(
        [
            "train",
            "demo_glyphs_protonet",
            "--out",
            str(out),
            *TINY,
            "--set",
            "train.lr=0.5",
            "--set",
            "train.steps=4",
            "--resume",
        ],
        capsys,
    )
    assert code == 2 and "--set train.lr would change what the resumed run trains" in err
    # truncated
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    code, err = run(["evaluate", str(ckpt)], capsys)
    assert code == 2 and "truncated or corrupt" in err and "\n" not in err


def test_no_traceback_unless_debug(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "mnemeta"]
    args = ["train", "demo_glyphs_protonet", "--set", "train.steps=x"]
    quiet = subprocess.run([*base, *args], capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip() == "error: --set: train.steps expects an integer; got 'x'"
    loud = subprocess.run([*base, "--debug", *args], capture_output=True, text=True)
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_list_shows_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert "protonet_omniglot_5w1s" in capsys.readouterr().out
