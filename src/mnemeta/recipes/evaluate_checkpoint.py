"""Evaluate a saved checkpoint: rebuild its learner from its own config, load, score."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mnemeta.config import Config
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.errors import DataError
from mnemeta.io import atomic_write_text
from mnemeta.loading import load_learner
from mnemeta.recipes.build import Learner, build_splits, check_ways, pick_device
from mnemeta.recipes.evaluate import EvalResult, evaluate


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready to score: its config (``eval`` as overridden), step, learner with its
    weights on ``device``, and the sampler of the evaluation episodes."""

    config: Config
    step: int
    learner: Learner
    sampler: EpisodeSampler
    device: torch.device


def load_for_evaluation(
    path: str,
    *,
    episodes: int | None = None,
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    split: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    data_root: str | None = None,
) -> LoadedCheckpoint:
    """Rebuild the checkpoint at ``path``; unset arguments come from its config."""
    loaded = load_learner(path)
    config = loaded.config
    ec = config.eval
    ec.episodes = episodes if episodes is not None else ec.episodes
    ec.ways, ec.shots = ways or ec.ways, shots or ec.shots
    ec.queries = queries if queries is not None else ec.queries
    ec.split = split or ec.split
    ec.seed = seed if seed is not None else ec.seed
    if data_root is not None:
        config.data.root = data_root
    dev = pick_device(device or config.device)
    splits = build_splits(config.data)
    if ec.split not in splits:
        raise DataError(
            f"split {ec.split!r} is not in this dataset; choose one of {', '.join(sorted(splits))}"
        )
    sampler = EpisodeSampler(
        splits[ec.split],
        ways=ec.ways,
        shots=ec.shots,
        queries=ec.queries,
        device=dev,
        split=ec.split,
    )
    check_ways(config, ec.ways, f"evaluate it with --ways {config.train.ways}")
    learner = loaded.learner
    learner.to(dev)
    return LoadedCheckpoint(config, loaded.step, learner, sampler, dev)


def evaluate_checkpoint(
    path: str,
    *,
    episodes: int | None = None,
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    split: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    data_root: str | None = None,
    out: str | None = None,
) -> tuple[EvalResult, Path]:
    """Score the checkpoint at ``path`` on fixed episodes; unset arguments come from its config."""
    loaded = load_for_evaluation(
        path,
        episodes=episodes,
        ways=ways,
        shots=shots,
        queries=queries,
        split=split,
        seed=seed,
        device=device,
        data_root=data_root,
    )
    ec = loaded.config.eval
    result = evaluate(
        loaded.learner,
        loaded.sampler,
        episodes=ec.episodes,
        seed=ec.seed,
        batch_size=ec.batch_size,
        split=ec.split,
    )
    target = (
        Path(out)
        if out
        else Path(path).with_name(f"eval_{ec.split}_{ec.ways}w{ec.shots}s_{ec.episodes}.json")
    )
    payload = {
        "checkpoint": str(path),
        "step": loaded.step,
        **result.to_dict(),
        "markdown": result.markdown(loaded.config.name),
    }
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    return result, target
