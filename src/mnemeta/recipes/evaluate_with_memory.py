"""Evaluate a MAML-family checkpoint with a persistent task memory (``mnemeta evaluate --memory``).

Every fixed test episode is adapted by :class:`~mnemeta.algorithms.task_memory_adapt.
MemoryAugmentedAdaptation`: the memory is searched for similar past tasks, adaptation starts
from their weights, and the episode is written back. Episodes are taken one after another, so a
later one can retrieve an earlier one, and the memory keeps them for the next run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mnemeta.algorithms.maml import MAML
from mnemeta.algorithms.protocol import accuracy
from mnemeta.algorithms.task_embedding import embedding_size
from mnemeta.algorithms.task_memory_adapt import WARM_STARTS, MemoryAugmentedAdaptation
from mnemeta.checkpoint import checkpoint_file
from mnemeta.errors import ConfigError
from mnemeta.io import atomic_write_text
from mnemeta.recipes.evaluate import EvalResult
from mnemeta.recipes.evaluate_checkpoint import load_for_evaluation, result_path
from mnemeta.stats import mean_ci95


def evaluate_with_memory(
    path: str,
    memory_path: str,
    *,
    episodes: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    split: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    data_root: str | None = None,
    batch_size: int | None = None,
    out: str | None = None,
    k: int = 5,
    tau: float = 0.1,
    beta: float = 0.0,
    warm_start: str | None = "weighted",
    min_similarity: float = -1.0,
) -> tuple[EvalResult, Path]:
    """Score checkpoint ``path`` on its fixed test episodes, adapting with the task memory at
    ``memory_path`` (created if missing) and writing every episode back to it."""
    from mnemeta.recipes.distributed import environment_ranks
    from mnemeta.store import TaskMemory

    started = environment_ranks()
    if started is not None:
        # Each episode retrieves what the episodes before it wrote back: an order that ranks
        # would break.
        raise ConfigError(
            f"evaluating with a task memory runs in one process ({started[1]} torchrun ranks "
            "started): every episode reads what the ones before it wrote; run `mnemeta "
            "evaluate ... --memory` without torchrun"
        )
    if warm_start not in WARM_STARTS:
        raise ConfigError(f"warm_start={warm_start!r} is unknown; choose weighted or nearest")
    loaded = load_for_evaluation(
        path,
        episodes=episodes,
        shots=shots,
        queries=queries,
        split=split,
        seed=seed,
        device=device,
        data_root=data_root,
        batch_size=batch_size,
    )
    config, learner, sampler = loaded.config, loaded.learner, loaded.sampler
    ec = config.eval
    if not isinstance(learner, MAML):
        raise ConfigError(
            f"--memory adapts the weights of MAML-family learners (maml, fomaml, metasgd, "
            f"anil); this checkpoint is {config.model.algorithm}"
        )
    learner.eval()
    encoder = getattr(learner.model, "encoder", None)
    if not callable(getattr(encoder, "out_features", None)):
        raise ConfigError("--memory needs a model with an encoder (the task embedding's features)")
    features = int(encoder.out_features(sampler.data.example_shape))  # type: ignore[union-attr]
    # Where the result goes is checked before the memory is opened and written to.
    target = result_path(out, checkpoint_file(path), f"eval_memory_{ec.split}_{ec.episodes}")
    memory = TaskMemory(memory_path, dim=embedding_size(features), index="flat")
    try:
        adapter = MemoryAugmentedAdaptation(
            learner,
            memory,
            k=k,
            tau=tau,
            beta=beta,
            warm_start=warm_start,
            min_similarity=min_similarity,
        )
        accs = []
        start = len(memory)
        for batch in sampler.fixed_episodes(ec.episodes, seed=ec.seed, batch_size=ec.batch_size):
            info = [{"checkpoint": str(path), "split": ec.split}] * batch.n_tasks
            with torch.no_grad():
                logits = adapter.adapt(batch.support, info=info)(batch.query_x)
            accs.append(accuracy(logits, batch.query_y).cpu())
        written = len(memory) - start
    finally:
        memory.close()
    mean, ci = mean_ci95(torch.cat(accs) * 100.0)
    result = EvalResult(mean, ci, ec.episodes, config.train.ways, ec.shots, ec.queries, ec.split)
    payload = {
        "checkpoint": str(path),
        "memory": str(memory_path),
        "records_written": written,
        "settings": {"k": k, "tau": tau, "beta": beta, "warm_start": warm_start},
        **result.to_dict(),
        "markdown": result.markdown(f"{config.name} + task memory"),
    }
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    return result, target
