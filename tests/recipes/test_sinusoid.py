"""The sinusoid recipe end to end on a tiny budget, and the demo command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mnemeta.cli import main
from mnemeta.errors import ConfigError
from mnemeta.recipes import sinusoid
from mnemeta.recipes.sinusoid import SinusoidSettings, run_sinusoid

#: A run of a few seconds: enough to exercise every path of training, evaluation and writing.
TINY = {"steps": 20, "eval_tasks": 20, "eval_queries": 10}


def strict_json(path: Path) -> Any:
    """``path`` parsed as strict JSON: NaN, Infinity and -Infinity are refused, not read."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_maml_beats_the_pretrained_baseline_after_one_step(tmp_path: Path) -> None:
    settings = SinusoidSettings(steps=600, eval_tasks=200, max_eval_steps=10)
    result = run_sinusoid(settings, tmp_path, progress=False)
    rows = {(r["method"], r["shots"]): r for r in result["results"]}
    assert set(rows) == {("MAML", 5), ("MAML", 10), ("pretrained", 5), ("pretrained", 10)}
    # Even 600 steps teach MAML an initialisation that one step adapts well.
    assert rows[("MAML", 10)]["mse_1"] < rows[("pretrained", 10)]["mse_1"]
    assert rows[("MAML", 10)]["mse_1"] < rows[("MAML", 10)]["mse_0"]
    assert (tmp_path / "sinusoid.png").stat().st_size > 10_000
    assert strict_json(tmp_path / "result.json")["settings"]["steps"] == 600


def test_demo_command_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--steps", "50", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "MAML" in out and "pretrained" in out and "sinusoid.png" in out
    assert strict_json(tmp_path / "result.json")["settings"]["steps"] == 50


def test_a_diverging_baseline_step_size_is_null_and_never_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo's result.json held NaN: the largest baseline step size, 0.05, overflows on some
    # high-amplitude validation tasks once the baseline is trained for a while. A step size of
    # 1,000 does so at once.
    monkeypatch.setattr(sinusoid, "BASELINE_STEP_SIZES", (0.01, 1000.0))
    result = run_sinusoid(SinusoidSettings(**TINY), tmp_path, progress=False)
    written = strict_json(tmp_path / "result.json")
    assert written["baseline_validation_mse"]["1000.0"] is None
    assert 0 < written["baseline_validation_diverged_tasks"]["1000.0"] <= TINY["eval_tasks"]
    assert written["baseline_validation_mse"]["0.01"] > 0
    assert written["baseline_step_size"] == result["baseline_step_size"] == 0.01


def test_a_diverging_test_curve_is_null_with_the_number_of_tasks(tmp_path: Path) -> None:
    # α = 1,000 makes MAML's own inner step (in training and at test) overflow.
    run_sinusoid(SinusoidSettings(**TINY, inner_lr=1000.0), tmp_path, progress=False)
    rows = strict_json(tmp_path / "result.json")["results"]
    maml = [r for r in rows if r["method"] == "MAML"]
    assert maml and all(r["mse_10"] is None and r["ci95_10"] is None for r in maml)
    assert all(0 < r["diverged_10"] <= TINY["eval_tasks"] for r in maml)
    finite = [r for r in rows if r["method"] == "pretrained"]
    assert all(isinstance(r["mse_10"], float) and "diverged_10" not in r for r in finite)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"steps": -10}, "--steps -10"),
        ({"steps": 0}, "--steps 0"),
        ({"steps": 2.5}, "--steps 2.5"),
        ({"seed": -1}, "--seed -1"),
        ({"seed": 2**64}, "--seed"),
        ({"meta_batch": 0}, "SinusoidSettings.meta_batch=0"),
        ({"shots": 0}, "SinusoidSettings.shots=0"),
        ({"eval_tasks": 1}, "SinusoidSettings.eval_tasks=1"),
        ({"eval_queries": 0}, "SinusoidSettings.eval_queries=0"),
        ({"max_eval_steps": 0}, "SinusoidSettings.max_eval_steps=0"),
        ({"inner_lr": 0.0}, "SinusoidSettings.inner_lr=0.0"),
        ({"lr": float("nan")}, "SinusoidSettings.lr=nan"),
        ({"lr": -1e-3}, "SinusoidSettings.lr=-0.001"),
        ({"eval_shots": ()}, "SinusoidSettings.eval_shots=()"),
        ({"eval_shots": (5, 5)}, "SinusoidSettings.eval_shots=(5, 5)"),
        ({"eval_shots": (0,)}, "SinusoidSettings.eval_shots=(0,)"),
        ({"strategy": "fast"}, "SinusoidSettings.strategy='fast'"),
        ({"compile": "yes"}, "SinusoidSettings.compile='yes'"),
    ],
)
def test_nonsense_settings_are_refused_naming_the_setting(
    settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as e:
        SinusoidSettings(**settings)
    assert str(e.value).startswith(named)
    assert "give" in str(e.value) or "choose" in str(e.value)  # and how to fix it


def test_run_sinusoid_checks_again_before_any_work(tmp_path: Path) -> None:
    settings = SinusoidSettings(**TINY)
    settings.steps = -1  # assigned after the settings were made
    with pytest.raises(ConfigError, match="--steps -1"):
        run_sinusoid(settings, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["demo", "sinusoid"])
def test_the_cli_refuses_steps_below_one_before_any_work(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([command, "--steps", "-10", "--out", str(out), "--no-progress"]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""  # no banner, no table
    assert printed.err.startswith("error: --steps -10:") and printed.err.count("\n") == 1
    assert not out.exists()
