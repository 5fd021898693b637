"""Evaluate a meta-learner on a fixed set of episodes: mean accuracy ± 95% CI.

Memory is bounded: what costs memory in an evaluation is the forward pass, whose activations
grow with the images in it (Conv-4 on 28x28 Omniglot: ~0.4 MB per image at its peak, measured;
``benchmarks/results/eval_memory.md``). Episodes are therefore scored a few at a time, as many
as keep one pass under ``max_images`` images (at least one whole episode, since learners with
per-task batch statistics must see an episode at once), and only their accuracies are kept. The
episodes themselves are streamed by :meth:`EpisodeSampler.fixed_episodes`. Peak memory then
depends neither on the number of episodes nor, beyond one episode, on the ways.

The numbers do not depend on how episodes are batched: the same seed gives the same episodes
whatever the batch size, and every learner adapts to each episode of a batch independently
(its own prototypes, its own inner loop under vmap, its own fine-tuned head; the contract suite
checks batch = per-task loop), so the accuracies, hence mean ± CI, are the same. For the same
reason a run over several processes (torchrun) shards the episodes: each rank scores a
contiguous range of them and the accuracies are gathered in order, giving one process's mean ± CI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mnemeta.algorithms.protocol import DrawsPerTask, MetaLearner, accuracy
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.errors import ConfigError
from mnemeta.recipes.distributed import SINGLE, Ranks
from mnemeta.stats import mean_ci95

# Images per forward pass, at most (support and query counted together). Measured for Conv-4 on
# 28x28 Omniglot on a 2-core CPU: ~0.4 MB of peak memory per image in a pass, and passes of a
# few hundred images as fast per image as larger ones (or faster: they stay in cache). 512
# images keep a pass near 200 MB, below what loading the data itself takes; 20-way 1-shot
# 15-query episodes (320 images) then go one per pass instead of 50 (16,000 images, 6 GB).
MAX_IMAGES_PER_PASS = 512


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


def episodes_per_pass(sampler: EpisodeSampler, batch_size: int, max_images: int) -> int:
    """How many episodes one forward pass scores: ``batch_size``, fewer if their images
    (``ways * (shots + queries)`` each) would exceed ``max_images``, and never fewer than one."""
    for name, value in (("eval.batch_size", batch_size), ("max_images", max_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    images = sampler.ways * (sampler.shots + sampler.queries)
    return max(1, min(batch_size, max_images // images))


@torch.no_grad()
def evaluate(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    *,
    episodes: int,
    seed: int,
    batch_size: int = 50,
    split: str = "test",
    max_images: int = MAX_IMAGES_PER_PASS,
    ranks: Ranks = SINGLE,
) -> EvalResult:
    """Adapt to each of ``episodes`` fixed episodes and score its queries.

    Args:
        batch_size: episodes per forward pass, at most (``eval.batch_size``).
        max_images: images per forward pass, at most, unless one episode alone has more (see
            :data:`MAX_IMAGES_PER_PASS`). Neither changes the result, only memory and speed.
        ranks: under torchrun, every rank calls this; each scores its share of the episodes and
            all get the whole result.

    The learner is put in ``eval()`` mode (BN running statistics) for the duration and restored.
    """
    accs = episode_accuracies(
        learner,
        sampler,
        episodes=episodes,
        seed=seed,
        batch_size=batch_size,
        max_images=max_images,
        ranks=ranks,
    )
    mean, ci = mean_ci95(accs * 100.0)
    return EvalResult(mean, ci, episodes, sampler.ways, sampler.shots, sampler.queries, split)


@torch.no_grad()
def episode_accuracies(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    *,
    episodes: int,
    seed: int,
    batch_size: int = 50,
    max_images: int = MAX_IMAGES_PER_PASS,
    ranks: Ranks = SINGLE,
) -> torch.Tensor:
    """The accuracy (a fraction) of each of the ``episodes`` fixed episodes, ``(episodes,)``: what
    :func:`evaluate` summarises, and what a paired comparison of two learners needs."""
    per_pass = episodes_per_pass(sampler, batch_size, max_images)
    was_training = isinstance(learner, nn.Module) and learner.training
    if isinstance(learner, nn.Module):
        learner.eval()
    # One float per episode, filled in place: nothing but the current pass's tensors is alive.
    lo, hi = ranks.shard(episodes)
    accs = torch.empty(hi - lo, dtype=torch.float32)
    done = 0
    part = (lo, hi) if ranks.active else None
    # A learner that draws per episode from the global RNG (Reptile's adapt) skips the other
    # ranks' draws, before and after its own: its episodes and the RNG end as in one process.
    draws = learner if ranks.active and isinstance(learner, DrawsPerTask) else None
    support_size = sampler.ways * sampler.shots
    if draws is not None:
        draws.skip_task_draws(lo, support_size, adapting=True)
    try:
        for batch in sampler.fixed_episodes(episodes, seed=seed, batch_size=per_pass, part=part):
            logits = learner.adapt(batch.support)(batch.query_x)
            accs[done : done + batch.n_tasks] = accuracy(logits, batch.query_y).cpu()
            done += batch.n_tasks
    finally:
        if isinstance(learner, nn.Module):
            learner.train(was_training)
    if draws is not None:
        draws.skip_task_draws(episodes - hi, support_size, adapting=True)
    return ranks.assemble(accs, episodes, lo)
