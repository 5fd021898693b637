"""The meta-RL recipe: outputs, exact resume, the CLI's train / evaluate / list, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import mnemeta
from mnemeta.algorithms.maml_rl import MAMLRL
from mnemeta.cli import main
from mnemeta.config import Config, load_config
from mnemeta.errors import ConfigError
from mnemeta.recipes.rl_train import rl_train

sys.path.insert(0, str(Path(__file__).parent))
from tiny_runs import NAVIGATION

SMALL_POLICY = ["model.hidden=[8]", "model.eval_steps=2"]


def navigation_config(out: Path, *extra: str) -> Config:
    return load_config(
        "maml_rl_navigation2d", [*NAVIGATION, *SMALL_POLICY, f"out_dir={out}", *extra]
    )


def _rows(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_its_report_curves_and_trajectories(tmp_path: Path) -> None:
    summary = rl_train(navigation_config(tmp_path, "train.steps=2"), progress=False)
    for name in ("checkpoint.pt", "metrics.csv", "result.json", "result.md", "curves.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "trajectories.png").is_file()  # the paper's Figure 4, for navigation
    test = summary["test"]
    assert list(test["stages"]) == ["before", "after_1", "after_2"]
    assert test["tasks"] == 3 and test["trajectories_per_task"] == 3 and test["horizon"] == 10
    for v in test["stages"].values():
        # -distance per step, 10 steps, goals within 0.71 of the origin and moves of 0.1 at most
        assert -10 * 1.5 < v["mean"] < 0 and v["ci95"] >= 0
    assert summary["steps_done"] == 2 and summary["tasks"] == 4
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert {"return", "post_return", "kl", "seconds"} <= set(rows[0])
    assert "| after 2 |" in (tmp_path / "result.md").read_text()


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path: Path, outer: str) -> None:
    extra = (f"model.outer={outer}", "model.ppo_epochs=2")
    rl_train(navigation_config(tmp_path / "a", "train.steps=4", *extra), progress=False)
    rl_train(navigation_config(tmp_path / "b", "train.steps=2", *extra), progress=False)
    rl_train(
        navigation_config(tmp_path / "b", "train.steps=4", *extra),
        resume=str(tmp_path / "b" / "checkpoint.pt"),
        progress=False,
    )
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(tmp_path / "a")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(tmp_path / "b")]
    a = mnemeta.load(tmp_path / "a" / "checkpoint.pt")
    b = mnemeta.load(tmp_path / "b" / "checkpoint.pt")
    assert isinstance(a, MAMLRL)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0, msg=name)
    result_a = json.loads((tmp_path / "a" / "result.json").read_text())["test"]
    result_b = json.loads((tmp_path / "b" / "result.json").read_text())["test"]
    assert result_a == result_b


def test_cli_trains_evaluates_and_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "maml_rl_navigation2d", "--out", str(tmp_path), "--no-progress"]
    for item in [*NAVIGATION, *SMALL_POLICY, "train.steps=1"]:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| before |" in out and "held-out tasks" in out
    assert main(["evaluate", str(tmp_path), "--episodes", "2", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "on 2 held-out navigation2d tasks, seed 7" in out and "after 2:" in out
    written = json.loads((tmp_path / "eval_2_tasks_seed7.json").read_text())
    assert written["tasks"] == 2 and list(written["stages"]) == ["before", "after_1", "after_2"]
    # The classification flags are refused, in one line.
    assert main(["evaluate", str(tmp_path), "--ways", "5"]) == 2
    assert "--ways applies to classification checkpoints" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "maml_rl_navigation2d" in capsys.readouterr().out


def test_bad_configs_fail_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="data.dataset must be a family of tasks"):
        rl_train(navigation_config(tmp_path / "x", "data.dataset=omniglot"), progress=False)
    with pytest.raises(ConfigError, match="run on the CPU"):
        rl_train(navigation_config(tmp_path / "y", "device=cuda"), progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert main(["train", "maml_rl_navigation2d", "--set", "model.outer=sgd"]) == 2
    assert "model.outer" in capsys.readouterr().err


def test_rl2_trains_and_resumes_exactly_through_the_recipe(tmp_path: Path) -> None:
    def config(out: Path, steps: int) -> Config:
        tiny = ["model.hidden=8", "model.minibatches=1", "model.ppo_epochs=2"]
        return load_config(
            "rl2_navigation2d", [*NAVIGATION, *tiny, f"train.steps={steps}", f"out_dir={out}"]
        )

    summary = rl_train(config(tmp_path / "a", 4), progress=False)
    assert list(summary["test"]["stages"]) == ["episode_1", "episode_2"]
    assert (tmp_path / "a" / "trajectories.png").is_file()  # episode 1 and 2 of a trial
    rl_train(config(tmp_path / "b", 2), progress=False)
    rl_train(
        config(tmp_path / "b", 4), resume=str(tmp_path / "b" / "checkpoint.pt"), progress=False
    )
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(tmp_path / "a")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(tmp_path / "b")]
    a = json.loads((tmp_path / "a" / "result.json").read_text())["test"]
    assert a == json.loads((tmp_path / "b" / "result.json").read_text())["test"]


@pytest.mark.parametrize("key", ["train.meta_batch", "eval.episodes"])
def test_fewer_tasks_than_torchrun_ranks_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """Under torchrun every rank needs a task of each meta-batch and of the test (checked before
    the process group is joined, so every rank stops at once with the same line)."""
    for name, value in (("WORLD_SIZE", "4"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    config = navigation_config(tmp_path / "t", "train.steps=1", "train.meta_batch=4", f"{key}=3")
    with pytest.raises(ConfigError, match=f"{key}=3 is fewer tasks than the 4 torchrun ranks"):
        rl_train(config, progress=False)
    assert not (tmp_path / "t").exists()
