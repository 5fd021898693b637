"""The training recipe on the glyphs: outputs and config mismatch (resume: test_resume.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mnemeta.checkpoint import load_checkpoint, save_checkpoint
from mnemeta.config import Config, load_config
from mnemeta.errors import MnemetaError
from mnemeta.recipes.evaluate_checkpoint import evaluate_checkpoint
from mnemeta.recipes.meta_train import meta_train

sys.path.insert(0, str(Path(__file__).parent))
from tiny_runs import EPISODIC as TINY


def tiny(out: Path, *extra: str) -> Config:
    return load_config("demo_glyphs_protonet", [*TINY, f"out_dir={out}", *extra])


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_a_run_writes_everything_a_user_looks_for(tmp_path: Path) -> None:
    summary = meta_train(tiny(tmp_path, "train.steps=4"), progress=False)
    for name in (
        "config.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "metrics.csv",
        "result.json",
        "result.md",
        "curves.png",
    ):
        assert (tmp_path / name).is_file(), name
    test = summary["test"]
    assert (test["episodes"], test["ways"], test["queries"]) == (20, 5, 15)
    # A percentage of 20 x 5 x 15 = 1500 queries: a whole number of fifteenths (float32 sums).
    assert test["mean"] * 15 == pytest.approx(round(test["mean"] * 15), abs=1e-3)
    # Chance is 20%; after 4 steps ProtoNet's nearest prototype already reads glyphs: 35-45%
    # for seeds 0-3. Below 25 is a label mix-up; a fraction (0-1) instead of percent fails too.
    assert 25 < test["mean"] < 60
    assert f"{test['mean']:.2f}" in (tmp_path / "result.md").read_text()
    assert (tmp_path / "result.md").read_text().startswith("| demo_glyphs_protonet | 5-way 1-shot")
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_from_another_config_is_refused(tmp_path: Path) -> None:
    meta_train(tiny(tmp_path, "train.steps=4"), progress=False)
    with pytest.raises(MnemetaError, match=r"written by another config \(train.lr: 0.001 -> 0.1\)"):
        meta_train(
            tiny(tmp_path, "train.steps=8", "train.lr=0.1"),
            progress=False,
            resume=str(tmp_path / "checkpoint.pt"),
        )


def test_a_checkpoint_older_than_a_config_key_still_resumes(tmp_path: Path) -> None:
    # A key added to mnemeta after the checkpoint was written reads as its default ...
    meta_train(tiny(tmp_path, "train.steps=4"), progress=False)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    saved = json.loads(state["config"])
    del saved["model"]["distance"]
    save_checkpoint(path, {**state, "config": json.dumps(saved)})
    meta_train(tiny(tmp_path, "train.steps=6"), resume=str(path), progress=False)
    assert load_checkpoint(path)["step"] == 6
    # ... but set to another value it is a different run
    with pytest.raises(MnemetaError, match="model.distance"):
        meta_train(
            tiny(tmp_path, "train.steps=8", "model.distance=cosine"),
            resume=str(path),
            progress=False,
        )


def test_evaluate_checkpoint_uses_the_same_episodes(tmp_path: Path) -> None:
    summary = meta_train(tiny(tmp_path, "train.steps=4"), progress=False)
    result, out = evaluate_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert result.mean == pytest.approx(summary["test"]["mean"])
    assert json.loads(out.read_text())["episodes"] == 20
    other, _ = evaluate_checkpoint(str(tmp_path / "checkpoint.pt"), ways=3, shots=2, episodes=10)
    assert (other.ways, other.shots, other.episodes) == (3, 2, 10)


def test_max_minutes_stops_training_evaluates_and_resumes_only_with_more_time(
    tmp_path: Path,
) -> None:
    # A limit of ~0 minutes stops after the first step, which is always taken.
    summary = meta_train(tiny(tmp_path, "train.steps=8", "train.max_minutes=1e-9"), progress=False)
    assert summary["steps_done"] == 1 and summary["stopped_by_max_minutes"]
    assert summary["test"]["episodes"] == 20  # evaluated all the same
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 1 and state["train_seconds"] > 0
    with pytest.raises(MnemetaError, match=r"already trained .* train.max_minutes=1e-09"):
        meta_train(
            tiny(tmp_path, "train.steps=8", "train.max_minutes=1e-9"),
            progress=False,
            resume=str(tmp_path / "checkpoint.pt"),
        )
    summary = meta_train(
        tiny(tmp_path, "train.steps=8", "train.max_minutes=60"),
        progress=False,
        resume=str(tmp_path / "checkpoint.pt"),
    )
    assert summary["steps_done"] == 8 and not summary["stopped_by_max_minutes"]
    assert summary["seconds"]["train_all_runs"] >= summary["seconds"]["train"]


MAML_TINY = [
    "model.algorithm=maml",
    "model.strategy=vmap",
    "train.meta_batch=2",
    "train.steps=2",
    "train.eval_every=0",
]


def test_train_compile_runs_the_compiled_meta_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mnemeta.recipes.build as build

    modes: list[str] = []
    real_compile = torch.compile

    def compile_for_test(fn, *, mode: str):  # type: ignore[no-untyped-def]
        # Inductor's C++ build takes minutes on CI; aot_eager traces the same graphs.
        modes.append(mode)
        return real_compile(fn, backend="aot_eager", fullgraph=True)

    torch._dynamo.reset()
    monkeypatch.setattr(build.torch, "compile", compile_for_test)
    meta_train(tiny(tmp_path / "eager", *MAML_TINY), progress=False)
    meta_train(
        tiny(tmp_path / "compiled", *MAML_TINY, "train.compile=reduce-overhead"), progress=False
    )
    assert modes == ["reduce-overhead"]
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert compiled == pytest.approx(eager, rel=1e-5)


def test_an_unknown_compile_mode_is_named(tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match=r"train.compile='fast' is unknown; choose one of"):
        meta_train(tiny(tmp_path, "train.steps=1", "train.compile=fast"), progress=False)


def test_a_negative_max_minutes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match=r"train.max_minutes=-1 must be at least 0"):
        meta_train(tiny(tmp_path, "train.steps=1", "train.max_minutes=-1"), progress=False)
