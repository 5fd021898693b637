"""``mnemeta evaluate`` for a meta-RL checkpoint: its held-out test, again, on other tasks if
asked (``--episodes`` tasks, ``--seed``). Under torchrun the tasks are split over the ranks
and gathered (the same mean ± CI); rank 0 writes the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnemeta.checkpoint import checkpoint_file, load_checkpoint
from mnemeta.errors import ConfigError
from mnemeta.io import atomic_write_text
from mnemeta.loading import load_learner, saved_config
from mnemeta.recipes.build import learner_spec
from mnemeta.recipes.distributed import process_group
from mnemeta.recipes.evaluate_checkpoint import result_path
from mnemeta.recipes.rl_train import build_environment, check_rl_config, evaluate_rl, one_thread


def is_rl_checkpoint(path: str) -> bool:
    """Whether the checkpoint at ``path`` (a file or its run folder) holds a meta-RL learner.
    Reads its config only (the weights are mapped, not read: the evaluation loads them)."""
    file = checkpoint_file(path)
    return learner_spec(saved_config(load_checkpoint(file, mmap=True), file)).recipe == "rl"


def evaluate_rl_checkpoint(
    path: str,
    *,
    tasks: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    out: str | None = None,
    unsupported: dict[str, Any] | None = None,
) -> tuple[str, Path]:
    """Run the held-out test of the checkpoint at ``path``; returns its markdown table and the
    JSON file it was written to (beside the checkpoint unless ``out``)."""
    given = [flag for flag, value in (unsupported or {}).items() if value]
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to classification "
            "checkpoints; a meta-RL checkpoint is "
            "evaluated on --episodes held-out tasks drawn with --seed"
        )
    file = checkpoint_file(path)
    loaded = load_learner(file)
    config = loaded.config
    if tasks is not None:
        config.eval.episodes = tasks
    if seed is not None:
        config.eval.seed = seed
    if device is not None:
        config.device = device
    check_rl_config(config)
    target = result_path(out, file, f"eval_{config.eval.episodes}_tasks_seed{config.eval.seed}")
    env = build_environment(config)
    with one_thread(), process_group("cpu") as (ranks, _):
        report = evaluate_rl(loaded.learner.eval(), env, config, ranks)
    rows = [
        f"{name.replace('_', ' ')}: {v['mean']:.2f} ± {v['ci95']:.2f}"
        for name, v in report["stages"].items()
    ]
    text = (
        f"{config.name} ({config.model.algorithm}, step {loaded.step}) on {report['tasks']} "
        f"held-out {config.data.dataset} tasks, seed {report['seed']}:\n  " + "\n  ".join(rows)
    )
    if not ranks.is_main:
        return text, target
    payload = {"checkpoint": str(file), "step": loaded.step, **report, "text": text}
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    return text, target
