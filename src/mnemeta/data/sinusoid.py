"""Sinusoid regression tasks (Finn, Abbeel & Levine 2017, §5.1).

A task is ``y = A sin(x − φ)`` with amplitude A ~ U[0.1, 5] and phase φ ~ U[0, π]; its
examples have x ~ U[−5, 5]. Episodes are K support and Q query points of one task. The sampler
has the same interface as :class:`~mnemeta.data.sampler.EpisodeSampler` (``sample``,
``fixed_episodes``, ``get_state``/``set_state``), so the training loop does not care which it has.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from mnemeta.episode import EpisodeBatch


class SinusoidTasks:
    """Draw batches of sinusoid regression episodes, ``x`` and ``y`` shaped ``(T, K, 1)``.

    Args:
        shots: K, support points per task.
        queries: Q, query points per task.
        amplitude, phase, x_range: the uniform ranges of the paper.
        seed: seeds the sampler's own generator.
    """

    ways = 0  # regression: no classes

    def __init__(
        self,
        *,
        shots: int,
        queries: int,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n_tasks: int = 1) -> EpisodeBatch:
        return self._draw(n_tasks, self.generator)

    def sample_tasks(self, n_tasks: int, generator: torch.Generator | None = None) -> Tensor:
        """``(T, 2)`` amplitudes and phases."""
        g = generator or self.generator
        a = _uniform((n_tasks,), self.amplitude, g)
        p = _uniform((n_tasks,), self.phase, g)
        return torch.stack([a, p], dim=1)

    def episodes_for(
        self, tasks: Tensor, generator: torch.Generator | None = None, *, shots: int | None = None
    ) -> EpisodeBatch:
        """Fresh support and query points for given ``(T, 2)`` tasks."""
        g = generator or self.generator
        k = self.shots if shots is None else shots
        x = _uniform((tasks.shape[0], k + self.queries, 1), self.x_range, g)
        y = tasks[:, :1, None] * torch.sin(x - tasks[:, 1:, None])
        x, y = x.to(self.device), y.to(self.device)
        return EpisodeBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], n_way=0)

    def fixed_episodes(
        self, n_episodes: int, *, seed: int, batch_size: int = 100
    ) -> Iterator[EpisodeBatch]:
        g = torch.Generator().manual_seed(seed)
        batches = []
        for start in range(0, n_episodes, batch_size):
            batches.append(self._draw(min(batch_size, n_episodes - start), g))
        yield from batches

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def _draw(self, n_tasks: int, g: torch.Generator) -> EpisodeBatch:
        return self.episodes_for(self.sample_tasks(n_tasks, g), g)


def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], g: torch.Generator) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=g)
