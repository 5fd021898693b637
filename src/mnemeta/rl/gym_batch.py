"""What the gymnasium-backed task families share: a batch of sub-environments stepped as one.

:class:`GymTaskBatch` turns ``tasks × envs_per_task`` gymnasium environments into a
:class:`~mnemeta.rl.environment.TaskEnvironment`: torch tensors ``(tasks, envs_per_task, ...)``
in, torch tensors out, and the masking convention of :class:`~mnemeta.rl.navigation.Navigation2D`
(once a trajectory is done its reward is 0, ``done`` stays True and its observation stays put).
The families (:mod:`mnemeta.rl.locomotion`, :mod:`mnemeta.rl.metaworld_ml1`) supply the task
draw, the per-task configuration of a sub-environment and the reward.

Why ``gymnasium.vector.SyncVectorEnv`` and not ``AsyncVectorEnv``: the async one runs one
process per sub-environment (800 for the paper's 40 tasks × 20 trajectories) and pickles every
action and observation through a pipe. On the 2-core machine this is measured on there is no
spare core for the workers to run on, so the pipes are pure overhead; the sync one steps them in
this process, in order, which also makes a rollout exactly reproducible. (learn2learn's
``maml_trpo.py`` dies inside its subprocess workers, learn2learn#434: no workers, no such
failure.)

The sub-environments are made once and kept (:class:`EnvPool`): building a MuJoCo model costs
~2.5 ms for HalfCheetah and ~100 ms for a Meta-World arm, and MAML-RL alternates between
rollouts of the whole meta-batch and rollouts of one task at a time (each task at its own
adapted weights), so rebuilding on every change of the task count would dominate. A
``SyncVectorEnv`` over the first ``n`` sub-environments is built once per task count and reused.

Nothing here imports gymnasium at import time; :func:`import_extra` does, when an environment is
built, and turns a missing package into a one-line :class:`~mnemeta.errors.ConfigError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mnemeta.errors import ConfigError
from mnemeta.rl.shard import TaskShard, integers

INSTALL_HINT = "pip install 'mnemeta[rl]'"


def import_extra(module: str, family: str) -> ModuleType:
    """Import ``module`` of the ``rl`` extra, or say which family needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"{family} needs the rl extra ({module} is missing: {err}): {INSTALL_HINT}"
        ) from err


def check_sizes(name: str, envs_per_task: int, horizon: int) -> None:
    """Refuse an empty batch or horizon before any MuJoCo model is built."""
    if envs_per_task < 1 or horizon < 1:
        raise ConfigError(
            f"{name} needs envs_per_task >= 1 and horizon >= 1; got {envs_per_task} and {horizon}"
        )


class EnvPool:
    """Sub-environments made on demand by ``make`` and kept; ``vector(n)`` steps the first ``n``.

    Several vector views share the same sub-environments, so only one may be in use at a time:
    every rollout starts with a reset of the view it uses, which is what a rollout does.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self.envs: list[Any] = []
        self._vectors: dict[int, Any] = {}

    def vector(self, n: int) -> Any:
        """The ``SyncVectorEnv`` over sub-environments ``0 .. n-1`` (made and cached once)."""
        if n not in self._vectors:
            gym = import_extra("gymnasium", "the gymnasium task families")
            while len(self.envs) < n:
                self.envs.append(self._make())
            # The factories hand back the pooled instances: SyncVectorEnv calls each once.
            fns = [lambda e=e: e for e in self.envs[:n]]
            self._vectors[n] = gym.vector.SyncVectorEnv(fns)
        return self._vectors[n]

    def close(self) -> None:
        """Close every sub-environment (the vector views hold no resources of their own)."""
        for env in self.envs:
            env.close()
        self.envs, self._vectors = [], {}


class GymTaskBatch:
    """The reset / step machinery over an :class:`EnvPool`; families override the hooks.

    Attributes:
        envs_per_task / horizon / observation_size / action_size / success: as
            :class:`~mnemeta.rl.environment.TaskEnvironment`.
        tasks: the tasks of the running rollout ``(tasks, task_size)`` (None before ``reset``).
        info: the vector env's ``info`` dict of the last step (numpy arrays over the
            ``tasks · envs_per_task`` sub-environments, task-major): what the reward was computed
            from, kept for diagnostics and tests.
        t: steps taken since ``reset``.
    """

    name = "a gymnasium task family"
    # Whether the family has a success criterion; without one ``success`` stays None, as the
    # protocol asks (an all-False tensor would read as a 0 % success rate).
    tracks_success = False

    def __init__(
        self,
        pool: EnvPool,
        envs_per_task: int,
        horizon: int,
    ) -> None:
        check_sizes(self.name, envs_per_task, horizon)
        self.pool = pool
        self.envs_per_task, self.horizon = envs_per_task, horizon
        # The sizes and the action bounds are the sub-environments' own (one vector env of one).
        one = pool.vector(1)
        action_space = one.single_action_space
        self.observation_size = int(one.single_observation_space.shape[0])
        self.action_size = int(action_space.shape[0])
        self._low, self._high = np.asarray(action_space.low), np.asarray(action_space.high)
        self.success: Tensor | None = None
        self.tasks: Tensor | None = None
        self.info: dict[str, Any] = {}
        self.t = 0
        self._vector: Any = None
        self._obs = torch.zeros(0)
        self.done = torch.zeros(0, dtype=torch.bool)

    # ---- the family's hooks ----
    def _configure(self, envs: list[Any], tasks: Tensor, seeds: list[int]) -> None:
        """Point each sub-environment at its task before the reset (``envs`` and ``seeds``
        task-major; the seeds are the ones the reset will be given)."""

    def _reward(self, env_reward: np.ndarray, info: dict[str, Any], actions: np.ndarray) -> Any:
        """The step's reward ``(tasks · envs_per_task,)`` from what the sub-environments
        returned and the (clipped) actions they were given; by default the environment's own."""
        return env_reward

    def _record(self, info: dict[str, Any], active: Tensor) -> None:
        """Update per-trajectory statistics (e.g. success) from a step's info."""

    # ---- TaskEnvironment ----
    def _seeds(
        self, tasks: int, generator: torch.Generator | None, shard: TaskShard | None
    ) -> list[int]:
        """One reset seed per sub-environment, drawn from ``generator`` (torch's global one if
        None): the same generator state gives the same initial states."""
        draw = integers(
            2**31 - 1, tasks=tasks, per_task=self.envs_per_task, generator=generator, shard=shard
        )
        return [int(s) for s in draw.tolist()]

    def _start(
        self, tasks: Tensor, generator: torch.Generator | None, shard: TaskShard | None = None
    ) -> Tensor:
        if tasks.dim() != 2 or tasks.shape[0] < 1:
            raise ConfigError(
                f"{self.name}: tasks must be (tasks, task_size) with at least one task; got "
                f"{tuple(tasks.shape)}; draw them with sample_tasks(n, generator=...)"
            )
        n = tasks.shape[0] * self.envs_per_task
        seeds = self._seeds(tasks.shape[0], generator, shard)
        self._vector = self.pool.vector(n)
        self._configure(self.pool.envs[:n], tasks, seeds)
        obs, self.info = self._vector.reset(seed=seeds)
        self.tasks, self.t = tasks, 0
        shape = (tasks.shape[0], self.envs_per_task)
        self.done = torch.zeros(shape, dtype=torch.bool, device=tasks.device)
        if self.tracks_success:
            self.success = torch.zeros(shape, dtype=torch.bool, device=tasks.device)
        self._obs = self._to_torch(obs).reshape(*shape, self.observation_size)
        return self._obs.clone()

    def _to_torch(self, array: np.ndarray) -> Tensor:
        assert self.tasks is not None
        return torch.from_numpy(np.asarray(array)).to(self.tasks.device, self.tasks.dtype)

    def reset(
        self,
        tasks: Tensor,
        *,
        generator: torch.Generator | None = None,
        shard: TaskShard | None = None,
    ) -> Tensor:
        """Start ``envs_per_task`` trajectories of each task; each sub-environment is reset with
        its own seed drawn from ``generator`` (for the whole meta-batch when ``tasks`` are a
        ``shard`` of it). Returns the first observation ``(tasks,
        envs_per_task, observation_size)`` in ``tasks``' dtype and on its device."""
        return self._start(tasks, generator, shard)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Step every sub-environment with its action, clipped to the action space (the policy's
        Gaussian samples are unbounded; rllab's ``normalize`` clips the same way).

        Returns ``(obs, reward, done)`` as :class:`~mnemeta.rl.navigation.Navigation2D`: reward 0
        and ``done`` True for a trajectory that was done before this step, True for all from
        the ``horizon``-th step on.
        """
        if self.tasks is None or self._vector is None:
            raise ConfigError(f"{self.name}.step before reset: call reset(tasks) first")
        if self.t >= self.horizon:
            raise ConfigError(
                f"{self.name}.step after the horizon ({self.horizon} steps): call reset(tasks)"
            )
        if actions.shape != (*self.done.shape, self.action_size):
            raise ConfigError(
                f"actions must be (tasks, envs_per_task, {self.action_size}) = "
                f"{(*self.done.shape, self.action_size)}; got {tuple(actions.shape)}"
            )
        flat = actions.detach().to("cpu", torch.float64).reshape(-1, self.action_size).numpy()
        clipped = np.clip(flat, self._low, self._high).astype(self._low.dtype)
        obs, env_reward, terminated, _, self.info = self._vector.step(clipped)
        reward = np.asarray(self._reward(env_reward, self.info, clipped), dtype=np.float64)
        active = ~self.done
        shape = self.done.shape
        reward_t = self._to_torch(reward).reshape(shape)
        reward_t = torch.where(active, reward_t, torch.zeros_like(reward_t))
        obs_t = self._to_torch(obs).reshape(*shape, self.observation_size)
        self._obs = torch.where(active.unsqueeze(-1), obs_t, self._obs)
        self._record(self.info, active)
        self.t += 1
        ended = torch.from_numpy(np.asarray(terminated, dtype=bool)).to(self.done.device)
        self.done = self.done | ended.reshape(shape) | (self.t >= self.horizon)
        return self._obs.clone(), reward_t, self.done.clone()

    def close(self) -> None:
        """Release the MuJoCo models; a later ``reset`` builds them again."""
        self.pool.close()
        self._vector = None
