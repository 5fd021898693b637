"""What the meta-RL training recipe (:mod:`mnemeta.recipes.rl_train`) asks of a learner.

A meta-RL learner is an ``nn.Module`` (its weights are its ``state_dict``) with the methods of
:class:`MetaRLLearner`. One meta-iteration is a pure function of the weights, the optimiser
state and ``(seed, iteration)``: every random draw of an iteration (tasks, initial states,
actions) comes from a generator seeded by them (:func:`iteration_generator`), never from the
global RNG, so a run resumed from a checkpoint repeats the uninterrupted run exactly.

Learners: ``maml_rl`` (:mod:`mnemeta.algorithms.maml_rl`, gradient-based) and ``rl2``
(:mod:`mnemeta.algorithms.rl2`, a recurrent policy whose hidden state is the memory of a trial).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from mnemeta.rl.environment import TaskEnvironment
from mnemeta.rl.shard import TaskShard


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """The CPU generator of meta-iteration ``iteration`` of a run seeded ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration)


class MetaRLLearner(Protocol):
    """The interface of a meta-RL learner (also an ``nn.Module``)."""

    def train_iteration(
        self,
        env: TaskEnvironment,
        *,
        seed: int,
        iteration: int,
        meta_batch: int,
        shard: TaskShard | None = None,
    ) -> dict[str, float]:
        """One meta-iteration on ``meta_batch`` tasks drawn by ``iteration_generator(seed,
        iteration)``; updates the weights in place and returns what it measured, at least
        ``"return"``: the mean undiscounted return of the trajectories it trained on (before
        adaptation, for MAML-RL; over the trial, for RL²).

        Under torchrun, ``shard`` is this rank's tasks of the meta-batch: the rank runs those
        alone, the whole batch's draws kept in step, and sums its parts of every batch mean
        with the other ranks' (:mod:`mnemeta.rl.shard`), so that every rank makes one
        process's update and returns the whole batch's metrics."""
        ...

    def evaluate(
        self,
        env: TaskEnvironment,
        tasks: Tensor,
        *,
        generator: torch.Generator,
        shard: TaskShard | None = None,
    ) -> dict[str, Tensor]:
        """The held-out test on ``tasks``: an ordered ``{column: (tasks,) values}``, one mean
        undiscounted return per task for each stage (MAML-RL: ``"before"``, ``"after_1"``, ...;
        RL²: ``"episode_1"``, ...), and ``"success_<stage>"`` columns, fractions in [0, 1], where
        the environment reports success (Meta-World). Weights are left unchanged. With a
        ``shard``, ``tasks`` are its rows of the test's tasks, run with the whole test's draws
        (each task scores as in one process); the columns are those rows."""
        ...

    def training_state(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the weights (an optimiser's state; ``{}`` for none)."""
        ...

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`training_state`."""
        ...
