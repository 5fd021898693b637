"""Resume through the CLI is exact for every learner family: a run stopped and resumed logs, row
for row, what the uninterrupted run logs, and ends with the same weights.

Each run crosses a learning-rate decay before it is stopped, stops strictly inside a decay
period (so a scheduler restarted from step 0 gives another rate), and validates on both sides
of the stop. Everything a checkpoint restores is then exercised: weights, optimiser state
(Adam's moments; RMSProp's averages and momentum), scheduler, the training sampler's RNG and
torch's, and the running sums of a half-filled logging window. On the CPU the runs are
bit-identical, so every logged value is compared with ``==``.

Stopping is done two ways. ``train.steps=A`` then ``--resume`` with ``train.steps=B`` resumes
from the checkpoint a finished run writes at its last step. An abort (a KeyboardInterrupt raised
as the training sampler draws step ``k``: what a second Ctrl-C does) resumes from the last
``checkpoint_every`` checkpoint, before rows that the aborted run logged after it: those are
dropped and logged again. (A first Ctrl-C checkpoints the step it is in:
``test_interrupt.py``.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mnemeta.checkpoint import load_checkpoint
from mnemeta.cli import main
from mnemeta.data.sampler import EpisodeSampler

sys.path.insert(0, str(Path(__file__).parent))
from tiny_runs import COPY, EPISODIC, ONE_SHOT

#: Decay every 4 steps, validate every 4, checkpoint every 3: stopped at 6, the run has
#: crossed the decay at 4 and validated there, and resumes from the checkpoint at 6, halfway
#: through the period (4, 8]; the resumed run decays at 8 and validates at 8 and 12.
SCHEDULE = [
    "train.lr_decay=0.5",
    "train.lr_decay_every=4",
    "train.eval_every=4",
    "train.checkpoint_every=3",
    "train.log_every=1",
]
STOP, END = 6, 12

#: The MAML family and Reptile on the glyphs, from their Omniglot presets.
GLYPHS_CLASSIFIER = [
    "data.dataset=glyphs",
    "data.image_size=16",  # Conv-4 pools 16 -> 1, as 28 -> 1: the same head width
    "train.split=train",  # the glyphs' train classes (trainval also holds val)
    "train.meta_batch=2",
    "train.queries=2",
    "eval.episodes=5",
    "eval.val_episodes=5",
    "eval.batch_size=5",
]


def cli_train(preset: str, out: Path, settings: list[str], *, resume: bool = False) -> int:
    args = ["train", preset, "--out", str(out), "--no-progress", "--device", "cpu"]
    for item in settings:
        args += ["--set", item]
    return main([*args, "--resume"] if resume else args)


def logged_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every row of metrics.jsonl without its wall-clock ``seconds``."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def resume_with_more_steps(preset: str, tmp_path: Path, settings: list[str]) -> tuple[Path, Path]:
    """An uninterrupted run of END steps, and one of STOP steps resumed up to END."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cli_train(preset, whole, [*settings, f"train.steps={END}"]) == 0
    assert cli_train(preset, split, [*settings, f"train.steps={STOP}"]) == 0
    assert load_checkpoint(split / "checkpoint.pt")["step"] == STOP
    assert cli_train(preset, split, [*settings, f"train.steps={END}"], resume=True) == 0
    assert json.loads((split / "result.json").read_text())["resumed_from_step"] == STOP
    return whole, split


def resume_after_ctrl_c(
    preset: str,
    tmp_path: Path,
    settings: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    at_step: int,
    checkpoint: int,
) -> tuple[Path, Path]:
    """An uninterrupted run of END steps, and one interrupted as it draws step ``at_step``
    (steps before it done and logged), resumed from its checkpoint at step ``checkpoint``."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    settings = [*settings, f"train.steps={END}"]
    assert cli_train(preset, whole, settings) == 0
    real_sample = EpisodeSampler.sample
    draws = 0

    def sample_until_ctrl_c(self: EpisodeSampler, n_tasks: int = 1) -> Any:
        nonlocal draws
        draws += 1
        if draws == at_step:
            raise KeyboardInterrupt
        return real_sample(self, n_tasks)

    with monkeypatch.context() as m:
        m.setattr(EpisodeSampler, "sample", sample_until_ctrl_c)
        capsys.readouterr()
        assert cli_train(preset, split, settings) == 130
    assert "error: aborted; files written before are intact" in capsys.readouterr().err
    assert load_checkpoint(split / "checkpoint.pt")["step"] == checkpoint
    # the interrupted run logged past its checkpoint: these rows must go on resume
    assert max(row["step"] for row in logged_rows(split)) > checkpoint
    assert cli_train(preset, split, settings, resume=True) == 0
    return whole, split


def assert_same_run(whole: Path, split: Path) -> list[dict[str, Any]]:
    rows = logged_rows(whole)
    assert logged_rows(split) == rows  # every key of every row, bit for bit
    a = load_checkpoint(whole / "checkpoint.pt")
    b = load_checkpoint(split / "checkpoint.pt")
    assert a["step"] == b["step"] == END
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    test_a = json.loads((whole / "result.json").read_text())["test"]
    assert json.loads((split / "result.json").read_text())["test"] == test_a
    return rows


def assert_step_schedule(rows: list[dict[str, Any]], lr: float) -> None:
    """The run really crossed the decays and validated on both sides of the stop."""
    train = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train] == list(range(1, END + 1))
    # logged after scheduler.step(): the rate of the next step, halved at 4, 8, 12
    assert [row["lr"] for row in train] == [lr * 0.5 ** (s // 4) for s in range(1, END + 1)]
    assert [row["step"] for row in rows if "val_accuracy" in row] == [4, 8, 12]


def test_metric_learner_resumes_with_more_steps(tmp_path: Path) -> None:
    whole, split = resume_with_more_steps(
        "demo_glyphs_protonet", tmp_path, [*EPISODIC, "data.image_size=16", *SCHEDULE]
    )
    assert_step_schedule(assert_same_run(whole, split), lr=1e-3)


def test_metric_learner_resumes_after_ctrl_c_inside_a_logging_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Logged every 2 steps, checkpointed every 5: the checkpoint at 5 holds the running sums of
    # step 5 alone, which the row at 6 averages with step 6. Ctrl-C while drawing step 8 leaves
    # the rows at 6 (and nothing of 7) past the checkpoint.
    settings = [*EPISODIC, "data.image_size=16", *SCHEDULE]
    settings += ["train.log_every=2", "train.checkpoint_every=5"]
    whole, split = resume_after_ctrl_c(
        "demo_glyphs_protonet",
        tmp_path,
        settings,
        monkeypatch,
        capsys,
        at_step=8,
        checkpoint=5,
    )
    rows = assert_same_run(whole, split)
    assert [row["step"] for row in rows if "loss" in row] == [2, 4, 6, 8, 10, 12]


@pytest.mark.parametrize("preset", ["maml_omniglot_5w1s", "metasgd_omniglot_5w1s"])
def test_maml_family_resumes_with_more_steps(tmp_path: Path, preset: str) -> None:
    settings = [*EPISODIC, *GLYPHS_CLASSIFIER, *SCHEDULE, "model.eval_inner_steps=2"]
    whole, split = resume_with_more_steps(preset, tmp_path, settings)
    assert_step_schedule(assert_same_run(whole, split), lr=1e-3)


#: Reptile: SGD (no optimiser state) with the rate annealed linearly from 1 to 0 at END.
REPTILE = [
    *EPISODIC,
    *GLYPHS_CLASSIFIER,
    "train.shots=2",
    "model.inner_steps=2",
    "model.inner_batch=4",
    "model.eval_inner_steps=2",
    "train.eval_every=4",
    "train.checkpoint_every=3",
]


def test_reptile_resumes_after_ctrl_c_on_its_linear_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # train.steps sets where the linear schedule reaches 0, so a Reptile run resumes with the
    # same train.steps (see the next test); it is stopped by Ctrl-C instead, while drawing step
    # 8, and resumes from its checkpoint at 6, after the validation at 4.
    whole, split = resume_after_ctrl_c(
        "reptile_omniglot_5w1s",
        tmp_path,
        REPTILE,
        monkeypatch,
        capsys,
        at_step=8,
        checkpoint=6,
    )
    rows = assert_same_run(whole, split)
    train = [row for row in rows if "loss" in row]
    assert [row["lr"] for row in train] == [1.0 - s / END for s in range(1, END + 1)]
    assert [row["step"] for row in rows if "val_accuracy" in row] == [4, 8, 12]


def test_a_linear_schedule_refuses_to_resume_with_other_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The rate anneals to 0 at train.steps: resumed with more steps it would jump back up
    # (1 - 6/12 = 0.5 after reaching 0 at step 6), which no uninterrupted run does.
    assert cli_train("reptile_omniglot_5w1s", tmp_path, [*REPTILE, "train.steps=2"]) == 0
    capsys.readouterr()
    more = [*REPTILE, "train.steps=4"]
    assert cli_train("reptile_omniglot_5w1s", tmp_path, more, resume=True) == 2
    err = capsys.readouterr().err
    assert "train.lr_schedule='linear'" in err and "train.steps: 2 -> 4" in err
    # and at its end it does not suggest raising train.steps either
    assert cli_train("reptile_omniglot_5w1s", tmp_path, [*REPTILE, "train.steps=2"], resume=True)
    assert "its linear schedule has ended: start a new run" in capsys.readouterr().err


def test_ntm_copy_resumes_with_more_steps(tmp_path: Path) -> None:
    # RMSProp with momentum: its square averages and momentum buffers must come back too. The
    # sequence recipe has no validation pass and logs no rate; a scheduler restarted at 6
    # would halve the rate at 10 instead of 8, which changes the loss from step 10 on.
    settings = [*COPY, *SCHEDULE, "train.meta_batch=4"]
    whole, split = resume_with_more_steps("ntm_copy", tmp_path, settings)
    rows = assert_same_run(whole, split)
    assert [row["step"] for row in rows] == list(range(1, END + 1))
    assert {"loss", "bits_wrong"} <= rows[-1].keys()


def test_mann_resumes_with_more_steps(tmp_path: Path) -> None:
    whole, split = resume_with_more_steps("mann_omniglot_5class", tmp_path, [*ONE_SHOT, *SCHEDULE])
    rows = assert_same_run(whole, split)
    assert [row["step"] for row in rows] == list(range(1, END + 1))
    assert {"loss", "accuracy", "accuracy_2nd"} <= rows[-1].keys()
