"""2D navigation (Finn, Abbeel & Levine 2017, §5.3), batched over tasks and trajectories.

A point agent starts at the origin; each task is a goal position drawn uniformly from the
square ``[-0.5, 0.5]²``; an action is a 2-D displacement, clipped to ``[-0.1, 0.1]`` per
coordinate; the observation is the agent's position. Every tensor is shaped ``(tasks,
envs_per_task, ...)``, so a whole meta-batch — every task, every trajectory of it — steps as
one tensor operation, on whatever device the goals are on.

What the reference code does, where it differs from the paper's text (read in
``cbfinn/maml_rl`` at 9c8e2eb, ``maml_examples/point_env_randgoal.py``, the environment of the
paper's runs, and ``maml_examples/maml_trpo_point.py``, their launcher):

- **Reward: the negative distance, not its square.** The paper says "the negative squared
  distance to the goal"; the code returns ``-(x² + y²) ** 0.5``, as do the PyTorch ports that
  follow it (``tristandeleu/pytorch-maml-rl`` ``maml_rl/envs/navigation.py``, ``-np.sqrt``;
  learn2learn's ``Navigation2D`` copies that file). The default here is the code's
  (``reward="distance"``); ``reward="squared_distance"`` is the paper's text.
- **The reward is computed after the step**, at the new position (``state += action``, then
  the distance), and the new position is the next observation.
- **Termination: a box, not a disc.** ``done = |x - gx| < 0.01 and |y - gy| < 0.01`` after
  the step (the paper: "within 0.01 of the goal"). The step that reaches the goal still earns
  its reward. Paths are otherwise cut at ``max_path_length = 100`` (the launcher; the paper's
  ``H = 100``), by the sampler (``VecEnvExecutor``), not by the environment.
- **Where the clip is.** ``PointEnvRandGoal.step`` does not clip; the launcher wraps it in
  rllab's ``normalize``, whose ``step`` maps the policy's action ``a`` to ``lb + (a + 1) / 2
  · (ub - lb)`` — ``0.1 · a`` for the bounds ``±0.1`` — and then clips to ``[-0.1, 0.1]``. The
  PyTorch port instead clips the raw action (no scaling). ``action_scale`` chooses: 1 (the
  default: the action *is* the displacement, as in the port and the issue) or 0.1 (maml_rl's
  runs: the policy acts in ``[-1, 1]``).

Batching: a trajectory that has terminated stays where it is; its later steps report reward
0 and ``done`` True, and :func:`~mnemeta.rl.rollout.rollout` masks them out, which is what
cutting the path does in the reference sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mnemeta.errors import ConfigError
from mnemeta.rl.shard import TaskShard

GOAL_LOW, GOAL_HIGH = -0.5, 0.5  # the unit square of the paper, centred on the start
MAX_ACTION = 0.1  # the action bound of the paper and of point_env_randgoal's action space
HORIZON = 100  # the paper's H and the launcher's max_path_length
GOAL_TOLERANCE = 0.01  # per coordinate, as point_env_randgoal's `done`


def sample_goals(
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` goals, one per task, uniform on ``[-0.5, 0.5]²``: ``(n, 2)``.

    ``generator`` makes the draw reproducible; it must live on ``device`` (a CPU generator
    for CPU goals), as ``torch.rand`` requires.
    """
    if n < 1:
        raise ConfigError(f"sample_goals needs n >= 1 tasks; got {n}")
    u = torch.rand(n, 2, generator=generator, device=device, dtype=dtype)
    return GOAL_LOW + (GOAL_HIGH - GOAL_LOW) * u


class Navigation2D:
    """The batched point environment. ``reset(goals)`` then ``step(actions)`` up to ``horizon``
    times.

    Args:
        envs_per_task: trajectories run side by side for each task (the paper: 20 to adapt).
        horizon: steps after which every trajectory is done (H = 100).
        reward: ``"distance"`` (``-‖p - g‖``, the reference code) or ``"squared_distance"``
            (``-‖p - g‖²``, the paper's text).
        action_scale: the displacement is ``clip(action_scale · action, -0.1, 0.1)``; 0.1
            reproduces rllab's ``normalize`` wrapper of maml_rl's runs (see the module).

    State (after ``reset``): ``position`` ``(tasks, envs_per_task, 2)``, ``done`` bool
    ``(tasks, envs_per_task)``, ``t`` the steps taken (a Python int: the horizon is the same
    for every trajectory, so it never needs a device sync).
    """

    def __init__(
        self,
        envs_per_task: int,
        *,
        horizon: int = HORIZON,
        reward: str = "distance",
        action_scale: float = 1.0,
    ) -> None:
        if envs_per_task < 1 or horizon < 1:
            raise ConfigError(
                f"Navigation2D needs envs_per_task >= 1 and horizon >= 1; got "
                f"{envs_per_task} and {horizon}"
            )
        if reward not in ("distance", "squared_distance"):
            raise ConfigError(
                f"reward must be 'distance' (the reference code) or 'squared_distance' (the "
                f"paper's text); got {reward!r}"
            )
        if not action_scale > 0:
            raise ConfigError(f"action_scale must be > 0; got {action_scale}")
        self.envs_per_task, self.horizon = envs_per_task, horizon
        self.reward, self.action_scale = reward, action_scale
        self.observation_size = self.action_size = 2
        self.goals: Tensor | None = None
        self.success: Tensor | None = None  # no success criterion beyond the return
        self.position = torch.zeros(0)
        self.done = torch.zeros(0, dtype=torch.bool)
        self.t = 0

    def sample_tasks(
        self, n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``n`` goals (:func:`sample_goals`), the tasks of this family: ``(n, 2)``."""
        return sample_goals(n, generator=generator, dtype=dtype)

    def reset(
        self,
        goals: Tensor,
        *,
        generator: torch.Generator | None = None,
        shard: TaskShard | None = None,
    ) -> Tensor:
        """Start every trajectory of every task at the origin (deterministic: ``generator`` and
        ``shard`` are not used, they are there for
        :class:`~mnemeta.rl.environment.TaskEnvironment`).

        Args:
            goals: ``(tasks, 2)``, one goal per task (:func:`sample_goals`); the state takes its
                device and dtype.

        Returns the first observation, ``(tasks, envs_per_task, 2)``: zeros.
        """
        if goals.dim() != 2 or goals.shape[1] != 2:
            raise ConfigError(
                f"goals must be (tasks, 2); got {tuple(goals.shape)}; draw them with "
                "sample_goals(tasks)"
            )
        tasks = goals.shape[0]
        self.goals = goals
        self.position = goals.new_zeros(tasks, self.envs_per_task, 2)
        self.done = torch.zeros(tasks, self.envs_per_task, dtype=torch.bool, device=goals.device)
        self.t = 0
        return self.position.clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Move every trajectory that is not done by its clipped action.

        Args:
            actions: ``(tasks, envs_per_task, 2)``.

        Returns ``(obs, reward, done)``: the new positions ``(tasks, envs_per_task, 2)``; the
        reward at the new position, ``(tasks, envs_per_task)``, 0 for a trajectory that was
        already done before this step; and bool ``done`` ``(tasks, envs_per_task)``, True once a
        trajectory has reached its goal or the horizon.
        """
        if self.goals is None:
            raise ConfigError("Navigation2D.step before reset: call reset(goals) first")
        if self.t >= self.horizon:
            raise ConfigError(
                f"Navigation2D.step after the horizon ({self.horizon} steps): call reset(goals)"
            )
        if actions.shape != self.position.shape:
            raise ConfigError(
                f"actions must be (tasks, envs_per_task, 2) = {tuple(self.position.shape)}; "
                f"got {tuple(actions.shape)}"
            )
        active = ~self.done
        move = (self.action_scale * actions).clamp(-MAX_ACTION, MAX_ACTION)
        self.position = torch.where(active.unsqueeze(-1), self.position + move, self.position)
        offset = self.position - self.goals.unsqueeze(1)
        squared = offset.square().sum(dim=-1)
        # The reference's (x**2 + y**2) ** 0.5: the sum of squares, then its root.
        cost = squared.sqrt() if self.reward == "distance" else squared
        reward = torch.where(active, -cost, torch.zeros_like(cost))
        reached = (offset.abs() < GOAL_TOLERANCE).all(dim=-1)
        self.t += 1
        self.done = self.done | reached | (self.t >= self.horizon)
        return self.position.clone(), reward, self.done.clone()
