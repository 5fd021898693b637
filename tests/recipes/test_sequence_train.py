"""The sequence recipe (NTM copy, MANN one-shot): outputs, no-wipe resume, the CLI path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mnemeta.checkpoint import load_checkpoint
from mnemeta.cli import main
from mnemeta.config import Config, load_config
from mnemeta.recipes.sequence_train import sequence_train

sys.path.insert(0, str(Path(__file__).parent))
from tiny_runs import COPY, ONE_SHOT


def copy_config(out: Path, *extra: str) -> Config:
    return load_config("ntm_copy", [*COPY, f"out_dir={out}", *extra])


def one_shot_config(out: Path, *extra: str) -> Config:
    return load_config("mann_omniglot_5class", [*ONE_SHOT, f"out_dir={out}", *extra])


def _losses(run_dir: Path) -> list[float]:
    return [
        json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_copy_run_writes_report_and_plots(tmp_path: Path) -> None:
    summary = sequence_train(copy_config(tmp_path, "train.steps=3"), progress=False)
    for name in (
        "checkpoint.pt",
        "metrics.csv",
        "result.json",
        "result.md",
        "curves.png",
        "copy_weights.png",
    ):
        assert (tmp_path / name).is_file(), name
    by_length = summary["test"]["bits_wrong_by_length"]
    assert set(by_length) == {"10", "20"}
    # The targets are uniform random bits, independent of what a network that has not learnt
    # to copy (3 steps) outputs: the bits wrong of a length-L sequence are Binomial(8L, 1/2),
    # mean 4L, and each length is scored on eval.episodes // 10 = 2 sequences (sd 3.2 at
    # L = 10, 4.5 at L = 20). Counts of bits: their mean over 2 sequences is a whole half.
    for length, v in by_length.items():
        bits = v["bits_wrong"]
        assert abs(bits - 4 * int(length)) <= 16 and 2 * bits == round(2 * bits), (length, v)
    # lengths 1-4 averaged: mean 4 x 2.5 = 10, sd about 0.8 over 2 x 4 sequences
    assert abs(summary["test"]["bits_wrong_lengths_1_to_max"]["mean"] - 10) <= 4
    assert "bits wrong per sequence, lengths 1-4" in (tmp_path / "result.md").read_text()


def test_one_shot_report_and_no_wipe_resume(tmp_path: Path) -> None:
    summary = sequence_train(one_shot_config(tmp_path / "w", "train.steps=2"), progress=False)
    by_instance = summary["test"]["accuracy_by_instance"]
    assert list(by_instance) == ["1", "2", "3", "4"]
    assert summary["test"]["episodes"] == 12
    for v in by_instance.values():
        # 12 episodes x 3 classes = 36 answers at each presentation: whole 36ths of 100%.
        assert v["accuracy"] * 0.36 == pytest.approx(round(v["accuracy"] * 0.36), abs=1e-4)
        # After 2 steps the network is at chance, 1/3 (Santoro et al.: the 1st presentation
        # always is, the label is unseen); 36 answers give an sd of at most 7.9 points.
        assert abs(v["accuracy"] - 100 / 3) <= 25, by_instance
    # the no-wipe variant carries the memory through the checkpoint: resume is still exact
    nowipe = ("model.wipe_memory=false",)
    sequence_train(one_shot_config(tmp_path / "a", "train.steps=6", *nowipe), progress=False)
    sequence_train(one_shot_config(tmp_path / "b", "train.steps=3", *nowipe), progress=False)
    # the LRUA state of the 4 episodes of the last batch: memory, usage, reads, least used
    memory, usage, read_weights, least_used = load_checkpoint(tmp_path / "b" / "checkpoint.pt")[
        "carry"
    ]
    assert memory.shape == (4, 16, 6) and usage.shape == least_used.shape == (4, 16)
    torch.testing.assert_close(read_weights.sum(-1), torch.ones(4, 2))  # 2 heads, softmax
    assert least_used.sum(-1).tolist() == [2.0] * 4  # the read_heads least-used rows
    assert (usage > 0).all()  # 12 steps of reads and writes spread over every row
    sequence_train(
        one_shot_config(tmp_path / "b", "train.steps=6", *nowipe),
        resume=str(tmp_path / "b" / "checkpoint.pt"),
        progress=False,
    )
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_cli_trains_a_sequence_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "lstm_copy", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    for item in [*(i for i in COPY if "memory_" not in i), "train.steps=2"]:  # an LSTM has none
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "bits wrong per sequence" in out and str(tmp_path) in out
    assert main(["train", "ntm_copy", "--set", "sequence.min_length=0"]) == 2
    assert "min_length" in capsys.readouterr().err


def test_max_minutes_stops_a_sequence_run_and_compile_is_refused(tmp_path: Path) -> None:
    from mnemeta.errors import MnemetaError

    summary = sequence_train(
        copy_config(tmp_path, "train.steps=6", "train.max_minutes=1e-9"), progress=False
    )
    assert summary["steps_done"] == 1 and summary["stopped_by_max_minutes"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    assert (tmp_path / "result.md").is_file()  # evaluated all the same
    with pytest.raises(MnemetaError, match=r"train.compile='default' applies to the episodic"):
        sequence_train(copy_config(tmp_path, "train.compile=default"), progress=False)


def test_the_lstm_baseline_trains_without_wiping_between_episodes(tmp_path: Path) -> None:
    # Its memory state was None, which the no-wipe carry could not detach (a TypeError at
    # step 2); now every memory, the LSTM's empty one too, has a state of tensors.
    settings = [i for i in ONE_SHOT if "memory_" not in i and "read_heads" not in i]
    config = load_config(
        "lstm_omniglot_5class",
        [*settings, "model.wipe_memory=false", "train.steps=4", f"out_dir={tmp_path}"],
    )
    sequence_train(config, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
