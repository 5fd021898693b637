"""Evaluate a saved checkpoint: rebuild its learner from its own config, load, score.

Under torchrun every rank loads the checkpoint, scores a contiguous share of the fixed episodes
and gathers the others' (:func:`mnemeta.recipes.evaluate.evaluate`): the same mean ± CI as one
process; rank 0 writes the result."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mnemeta.checkpoint import checkpoint_file
from mnemeta.checks import check_values
from mnemeta.config import Config
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.errors import ConfigError, DataError
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
    batch_size: int | None = None,
) -> LoadedCheckpoint:
    """Rebuild the checkpoint at ``path`` (a checkpoint file or its run folder); unset
    arguments come from its config."""
    loaded = load_learner(checkpoint_file(path))
    config = loaded.config
    ec = config.eval
    ec.episodes = episodes if episodes is not None else ec.episodes
    ec.ways, ec.shots = ways or ec.ways, shots or ec.shots
    ec.queries = queries if queries is not None else ec.queries
    ec.seed = seed if seed is not None else ec.seed
    ec.batch_size = batch_size if batch_size is not None else ec.batch_size
    if data_root is not None:
        if is_text_file(data_root) and config.data.dataset in TEXT_DATASETS:
            # Another file of labelled texts: its classes are new ones, so every class is
            # scored (split "all"), embedded by the encoder the checkpoint was trained on.
            config.data.dataset, config.data.path = "text", data_root
            ec.split = "all"
        else:
            config.data.root = data_root
    ec.split = split or ec.split
    check_values(config)  # the values given here obey the same rules as the config's
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


#: The data sets of sentence embeddings: a checkpoint trained on one evaluates on any text file.
TEXT_DATASETS = ("clinc150", "text")


def is_text_file(path: str) -> bool:
    from mnemeta.data.text import FORMATS

    return Path(path).suffix.lower() in FORMATS


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
    batch_size: int | None = None,
    out: str | None = None,
) -> tuple[EvalResult, Path]:
    """Score the checkpoint at ``path`` on fixed episodes; unset arguments come from its config.
    Under torchrun, every rank returns the result and rank 0 writes it."""
    from mnemeta.recipes.distributed import process_group

    with process_group(device or "auto") as (ranks, where):
        loaded = load_for_evaluation(
            path,
            episodes=episodes,
            ways=ways,
            shots=shots,
            queries=queries,
            split=split,
            seed=seed,
            device=str(where) if ranks.active else device,  # torchrun: this rank's device
            data_root=data_root,
            batch_size=batch_size,
        )
        path = str(checkpoint_file(path))
        ec = loaded.config.eval
        # Where the result goes is checked before the (possibly long) evaluation, not after it.
        target = result_path(
            out, Path(path), f"eval_{ec.split}_{ec.ways}w{ec.shots}s_{ec.episodes}"
        )
        result = evaluate(
            loaded.learner,
            loaded.sampler,
            episodes=ec.episodes,
            seed=ec.seed,
            batch_size=ec.batch_size,
            split=ec.split,
            ranks=ranks,
        )
    if not ranks.is_main:
        return result, target
    payload = {
        "checkpoint": str(path),
        "step": loaded.step,
        **result.to_dict(),
        "markdown": result.markdown(loaded.config.name),
    }
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    return result, target


def result_path(out: str | None, checkpoint: Path, name: str) -> Path:
    """Where an evaluation's JSON goes: ``out`` (a file, or a folder to put ``name.json`` in),
    by default beside the checkpoint. A missing folder is created when the result is written;
    a file in the way is a one-line error. Call it before evaluating."""
    if not out:
        return checkpoint.with_name(f"{name}.json")
    target = Path(out).expanduser()
    if target.is_dir() or out.endswith(("/", os.sep)):
        target = target / f"{name}.json"
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
            break
    return target
