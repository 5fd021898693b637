"""``evaluate_with_memory`` on tiny untrained checkpoints over the embedded glyphs.

The checkpoints are written directly (a training run would add ~15 s and test nothing here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mnemeta.checkpoint import save_checkpoint
from mnemeta.config import load_config
from mnemeta.errors import MnemetaError
from mnemeta.recipes.build import build_learner
from mnemeta.recipes.evaluate_with_memory import evaluate_with_memory
from mnemeta.store import TaskMemory

TINY = [
    "data.image_size=16",  # glyphs render ~3x faster than at 28
    "backbone.hidden=8",
    "train.ways=5",
    "eval.episodes=6",
    "eval.batch_size=3",
]


def _checkpoint(tmp_path: Path, *extra: str) -> str:
    config = load_config("demo_glyphs_protonet", [*TINY, *extra])
    torch.manual_seed(0)
    learner = build_learner(config, (1, 16, 16), n_way=config.train.ways)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"config": config.to_json(), "step": 0, "model": learner.state_dict()})
    return str(path)


def test_episodes_are_written_back_and_found_again(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path, "model.algorithm=anil")
    memory = tmp_path / "memory"
    first, out = evaluate_with_memory(checkpoint, str(memory), out=str(tmp_path / "a.json"))
    assert (first.episodes, first.ways, first.queries) == (6, 5, 15)
    # 6 x 5 x 15 = 450 queries: a whole number of 4.5ths of a percent (float32 sums) ...
    assert first.mean * 4.5 == pytest.approx(round(first.mean * 4.5), abs=1e-3)
    # ... near chance (20%) for an untrained ANIL: 17.6-29.8 over init seeds 0-3.
    assert 10 < first.mean < 40
    assert json.loads(out.read_text())["records_written"] == 6
    # The same fixed episodes again: each now finds itself in the memory (cosine 1).
    evaluate_with_memory(checkpoint, str(memory), out=str(tmp_path / "b.json"))
    with TaskMemory(memory) as mem:
        assert len(mem) == 12
        newest = mem.get(max(mem.ids()))
        assert newest.info["retrieved"]  # the second pass warm-started from the first
        assert newest.info["checkpoint"] == checkpoint


def test_metric_learners_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match="MAML-family"):
        evaluate_with_memory(_checkpoint(tmp_path), str(tmp_path / "memory"))


def test_torchrun_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each episode retrieves what the ones before it wrote back: ranks would break that order."""
    checkpoint = _checkpoint(tmp_path, "model.algorithm=anil")
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    with pytest.raises(MnemetaError, match="runs in one process .2 torchrun ranks started"):
        evaluate_with_memory(checkpoint, str(tmp_path / "memory"))
    assert not (tmp_path / "memory").exists()
