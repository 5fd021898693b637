"""HalfCheetah-Vel and HalfCheetah-Dir (Finn, Abbeel & Levine 2017, §5.3), over gymnasium.

The MuJoCo half-cheetah of gymnasium's ``HalfCheetah-v5``, one sub-environment per trajectory,
``tasks × envs_per_task`` of them stepped as one ``SyncVectorEnv``
(:class:`~mnemeta.rl.gym_batch.GymTaskBatch`, which says why sync). A task is a row:

- **Vel**: a target forward velocity ``v_goal ~ U[0, 2]``, ``(n, 1)``; reward
  ``-|v - v_goal| - 0.05 ‖a‖²``.
- **Dir**: a direction ``d = ±1`` (backward / forward, each with probability ½), ``(n, 1)``;
  reward ``d · v - 0.05 ‖a‖²``.

Where the constants come from (read, not copied):

- ``cbfinn/maml_rl`` at 9c8e2eb, the paper's code: ``rllab/envs/mujoco/half_cheetah_env_rand.py``
  ``step`` (lines 57–66): ``ctrl_cost = 1e-1 * 0.5 * sum(a²)`` on the action clipped to its
  bounds (line 60–61), ``run_cost = |v - goal_vel|`` (line 62), ``reward = -(ctrl + run)``;
  goals ``uniform(0.0, 2.0)`` (line 24). ``half_cheetah_env_rand_direc.py``: the task is drawn
  as ``uniform(0, 2)`` and the direction is ``-1`` below 1, ``+1`` above (lines 30–41: a fair
  coin), ``run_cost = -direction · v`` (line 70), the same control cost (line 69). The launcher
  ``maml_examples/cluster_maml_trpo_cheetah.py``: ``max_path_length = 200``, 2 × 100 ReLU,
  ``fast_lr`` 0.1, 20 trajectories, meta-batch 40, TRPO step 0.01.
- ``tristandeleu/pytorch-maml-rl`` at 21d4ba1, ``maml_rl/envs/mujoco/half_cheetah.py``
  (``HalfCheetahVelEnv.step`` lines 59–69, ``HalfCheetahDirEnv.step`` lines 109–119): the same
  constants, with ``v`` the finite difference ``(x_after - x_before) / dt`` of the root's
  x-position — gymnasium's ``info["x_velocity"]``, which is what is used here.

What differs from the paper's environment, on purpose or by necessity:

- **v** is the root's finite-difference velocity (pytorch-maml-rl, gymnasium), not rllab's
  ``get_body_comvel("torso")[0]`` (the torso subtree's centre-of-mass velocity, which
  mujoco-py computed and the current bindings do not expose the same way). The two agree on
  average over a stride, not step by step.
- **The observation** is gymnasium v5's 17 numbers (``qpos[1:]``, ``qvel``; the x-position is
  excluded), not rllab's 20 (which append the torso's centre of mass). The initial state is
  gymnasium's (``reset_noise_scale`` 0.1), seeded per sub-environment.
- **The reward** is computed here from ``x_velocity`` and the clipped action with the paper's
  weights; gymnasium's own ``reward`` (forward velocity, control weight 0.1) is ignored.
- **No action normalisation**: the half-cheetah's bounds are already ``[-1, 1]``, so rllab's
  ``normalize`` is the identity followed by the clip done here.

gymnasium and MuJoCo are imported when an environment is built, never at import: ``import
mnemeta`` and ``import mnemeta.rl`` do not load them, and without the extra the constructor
raises a one-line :class:`~mnemeta.errors.ConfigError` naming ``pip install 'mnemeta[rl]'``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mnemeta.errors import ConfigError
from mnemeta.rl.gym_batch import EnvPool, GymTaskBatch, check_sizes, import_extra
from mnemeta.rl.shard import TaskShard

HORIZON = 200  # max_path_length of cluster_maml_trpo_cheetah.py and the paper's H
CTRL_COST = 0.05  # 1e-1 * 0.5 of half_cheetah_env_rand.py line 61 (gymnasium's default: 0.1)
VELOCITY_LOW, VELOCITY_HIGH = 0.0, 2.0  # half_cheetah_env_rand.py line 24
ENV_ID = "HalfCheetah-v5"


class HalfCheetah(GymTaskBatch):
    """The batched half-cheetah of a task family; use :class:`HalfCheetahVel` or
    :class:`HalfCheetahDir`.

    Args:
        envs_per_task: trajectories run side by side for each task (the paper: 20).
        horizon: steps after which every trajectory is done (the paper: 200).
    """

    name = "HalfCheetah"

    def __init__(self, envs_per_task: int, *, horizon: int = HORIZON) -> None:
        check_sizes(self.name, envs_per_task, horizon)
        gym = import_extra("gymnasium", self.name)
        import_extra("mujoco", self.name)
        # The time limit is the horizon (gymnasium's default is 1000); reset always comes
        # before a step past it, so the vector env's autoreset never fires.
        pool = EnvPool(lambda: gym.make(ENV_ID, max_episode_steps=horizon))
        super().__init__(pool, envs_per_task, horizon)

    def _task_values(self) -> np.ndarray:
        """Each sub-environment's task value, task-major: ``(tasks · envs_per_task,)``."""
        assert self.tasks is not None
        values = self.tasks[:, 0].detach().to("cpu", torch.float64).numpy()
        return np.repeat(values, self.envs_per_task)

    def _forward_reward(self, velocity: np.ndarray, task: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _reward(self, env_reward: np.ndarray, info: dict[str, Any], actions: np.ndarray) -> Any:
        velocity = np.asarray(info["x_velocity"], dtype=np.float64)
        ctrl = CTRL_COST * np.square(actions.astype(np.float64)).sum(axis=-1)
        return self._forward_reward(velocity, self._task_values()) - ctrl

    def reset(
        self,
        tasks: Tensor,
        *,
        generator: torch.Generator | None = None,
        shard: TaskShard | None = None,
    ) -> Tensor:
        """Start the trajectories of ``tasks`` ``(tasks, 1)``; every sub-environment is reset
        with its own seed drawn from ``generator`` (gymnasium's noisy initial state; for the
        whole meta-batch when ``tasks`` are a ``shard`` of it)."""
        if tasks.dim() != 2 or tasks.shape[1] != 1:
            raise ConfigError(
                f"{self.name} tasks must be (tasks, 1); got {tuple(tasks.shape)}; draw them "
                "with sample_tasks(n, generator=...)"
            )
        return self._start(tasks, generator, shard)


class HalfCheetahVel(HalfCheetah):
    """HalfCheetah-Vel: run at a target velocity ``v_goal ~ U[0, 2]``; reward ``-|v - v_goal|
    - 0.05 ‖a‖²`` (see the module)."""

    name = "HalfCheetahVel"

    def sample_tasks(
        self, n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``n`` target velocities, uniform on ``[0, 2]``: ``(n, 1)``."""
        if n < 1:
            raise ConfigError(f"sample_tasks needs n >= 1 tasks; got {n}")
        u = torch.rand(n, 1, generator=generator, dtype=dtype)
        return VELOCITY_LOW + (VELOCITY_HIGH - VELOCITY_LOW) * u

    def _forward_reward(self, velocity: np.ndarray, task: np.ndarray) -> np.ndarray:
        return -np.abs(velocity - task)


class HalfCheetahDir(HalfCheetah):
    """HalfCheetah-Dir: run forward (``d = +1``) or backward (``d = -1``); reward ``d · v -
    0.05 ‖a‖²`` (see the module)."""

    name = "HalfCheetahDir"

    def sample_tasks(
        self, n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``n`` directions, ``-1`` or ``+1`` with probability ½ each: ``(n, 1)``."""
        if n < 1:
            raise ConfigError(f"sample_tasks needs n >= 1 tasks; got {n}")
        coin = torch.randint(0, 2, (n, 1), generator=generator)
        return (2 * coin - 1).to(dtype)

    def _forward_reward(self, velocity: np.ndarray, task: np.ndarray) -> np.ndarray:
        return task * velocity
