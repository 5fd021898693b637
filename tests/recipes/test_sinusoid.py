"""The sinusoid recipe end to end on a tiny budget, and the demo command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnemeta.cli import main
from mnemeta.recipes.sinusoid import SinusoidSettings, run_sinusoid


def test_maml_beats_the_pretrained_baseline_after_one_step(tmp_path: Path) -> None:
    settings = SinusoidSettings(steps=600, eval_tasks=200, max_eval_steps=10)
    result = run_sinusoid(settings, tmp_path, progress=False)
    rows = {(r["method"], r["shots"]): r for r in result["results"]}
    assert set(rows) == {("MAML", 5), ("MAML", 10), ("pretrained", 5), ("pretrained", 10)}
    # Even 600 steps teach MAML an initialisation that one step adapts well.
    assert rows[("MAML", 10)]["mse_1"] < rows[("pretrained", 10)]["mse_1"]
    assert rows[("MAML", 10)]["mse_1"] < rows[("MAML", 10)]["mse_0"]
    assert (tmp_path / "sinusoid.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "result.json").read_text())["settings"]["steps"] == 600


def test_demo_command_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--steps", "50", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "MAML" in out and "pretrained" in out and "sinusoid.png" in out
