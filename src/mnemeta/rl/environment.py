"""What a meta-RL environment is to mnemeta: a family of tasks that steps a batch of them at once.

Every environment — the torch 2D navigation, the gymnasium MuJoCo locomotion wrappers, Meta-World
ML1 — has this one shape, so one rollout function (:func:`mnemeta.rl.rollout.rollout`), the
learners and the training recipe serve them all. Tensors are ``(tasks, envs_per_task, ...)``: a
meta-batch of tasks, each run ``envs_per_task`` times side by side.

A task is a row of numbers (a goal ``(x, y)``, a target velocity, a direction ±1, a Meta-World
task index): :meth:`TaskEnvironment.sample_tasks` draws them from a generator, so a seed gives
the same tasks on every machine, and :meth:`TaskEnvironment.reset` starts them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mnemeta.rl.shard import TaskShard


@runtime_checkable
class TaskEnvironment(Protocol):
    """A batched family of tasks.

    Attributes:
        envs_per_task: trajectories run side by side for each task (K of the papers).
        horizon: steps after which every trajectory is done.
        observation_size / action_size: the widths of one observation and one action.
        success: ``None``, or after a rollout a bool ``(tasks, envs_per_task)``: whether each
            trajectory met the task's success criterion at some step (Meta-World's
            ``info["success"]``). Environments without such a criterion leave it ``None``.
    """

    envs_per_task: int
    horizon: int
    observation_size: int
    action_size: int
    success: Tensor | None

    def sample_tasks(
        self, n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``n`` tasks of the family, ``(n, task_size)``, drawn with ``generator`` (CPU)."""
        ...

    def reset(
        self,
        tasks: Tensor,
        *,
        generator: torch.Generator | None = None,
        shard: TaskShard | None = None,
    ) -> Tensor:
        """Start ``envs_per_task`` trajectories of each task in ``tasks``; a stochastic initial
        state is drawn from ``generator`` — for the whole meta-batch when ``tasks`` are a
        ``shard`` of it, keeping this shard's rows (:func:`mnemeta.rl.shard.integers`).
        Returns the first observation ``(tasks, envs_per_task, observation_size)``, in
        ``tasks``' dtype and on its device."""
        ...

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``actions`` ``(tasks, envs_per_task, action_size)`` -> ``(obs, reward, done)``: the
        next observation, the step's reward ``(tasks, envs_per_task)`` (0 for a trajectory done
        before this step) and bool ``done``, True from the step a trajectory ends on."""
        ...
