"""Evaluate a meta-learner on a fixed set of episodes: mean accuracy ± 95% CI."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mnemeta.algorithms.protocol import MetaLearner, accuracy
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.stats import mean_ci95


@dataclass(frozen=True)
class EvalResult:
    """Per-episode accuracies summarised: ``mean ± ci95`` in percent."""

    mean: float
    ci95: float
    episodes: int
    ways: int
    shots: int
    queries: int
    split: str

    def markdown(self, name: str) -> str:
        return (
            f"| {name} | {self.ways}-way {self.shots}-shot | {self.split} | "
            f"{self.mean:.2f} ± {self.ci95:.2f} % | {self.episodes} episodes |"
        )

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@torch.no_grad()
def evaluate(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    *,
    episodes: int,
    seed: int,
    batch_size: int = 50,
    split: str = "test",
) -> EvalResult:
    """Adapt to each of ``episodes`` fixed episodes and score its queries.

    The learner is put in ``eval()`` mode (BN running statistics) for the duration and restored.
    """
    was_training = isinstance(learner, nn.Module) and learner.training
    if isinstance(learner, nn.Module):
        learner.eval()
    accs = []
    try:
        for batch in sampler.fixed_episodes(episodes, seed=seed, batch_size=batch_size):
            logits = learner.adapt(batch.support)(batch.query_x)
            accs.append(accuracy(logits, batch.query_y).cpu())
    finally:
        if isinstance(learner, nn.Module):
            learner.train(was_training)
    mean, ci = mean_ci95(torch.cat(accs) * 100.0)
    return EvalResult(mean, ci, episodes, sampler.ways, sampler.shots, sampler.queries, split)
