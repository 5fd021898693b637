"""Batched rollouts: every trajectory of every task of a meta-batch, one tensor step at a time.

The shapes are ``(tasks, trajectories, horizon, ...)`` throughout. A trajectory that reaches
its goal before the horizon is masked from that step on (``mask`` 0), which is what the
reference sampler's cutting of the path does (rllab's ``VecEnvExecutor`` ends a path at
``done``); the baseline, the returns and the loss all skip masked steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.errors import ConfigError
from mnemeta.rl.environment import TaskEnvironment
from mnemeta.rl.policy import GaussianMLPPolicy, Params
from mnemeta.rl.shard import TaskShard, normal

DISCOUNT = 0.99  # γ of maml_rl's BatchMAMLPolopt and of learn2learn's maml_trpo example


@dataclass(frozen=True)
class Trajectories:
    """A meta-batch of rollouts.

    Attributes:
        obs: ``(tasks, trajectories, horizon, obs_size)``, the observation each action saw.
        actions: ``(tasks, trajectories, horizon, action_size)``, the policy's actions before
            the environment's clip (what ``log_prob`` scores).
        rewards: ``(tasks, trajectories, horizon)``, the reward of each step (0 where masked).
        mask: ``(tasks, trajectories, horizon)``, 1 for a step taken before the trajectory
            ended, 0 after; same dtype as ``rewards``.
        returns: ``(tasks, trajectories, horizon)``, the discounted returns-to-go
            ``R_t = Σ_{k ≥ t} γ^{k - t} r_k`` (:func:`returns_to_go`).
        discount: γ used for ``returns``.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    returns: Tensor
    discount: float

    @property
    def tasks(self) -> int:
        return self.rewards.shape[0]

    @property
    def horizon(self) -> int:
        return self.rewards.shape[2]

    def select(self, tasks: slice) -> Trajectories:
        """The trajectories of some tasks, the task axis kept: ``trajs.select(slice(i, i + 1))``
        is task ``i`` alone, shaped ``(1, trajectories, horizon, ...)``."""
        return Trajectories(
            self.obs[tasks],
            self.actions[tasks],
            self.rewards[tasks],
            self.mask[tasks],
            self.returns[tasks],
            self.discount,
        )

    def undiscounted_return(self) -> Tensor:
        """``Σ_t r_t`` per trajectory, ``(tasks, trajectories)``: the "average return" that
        the paper's curves plot, once averaged."""
        return self.rewards.sum(dim=-1)


def concatenate(parts: list[Trajectories]) -> Trajectories:
    """The tasks of several :class:`Trajectories` (same trajectories, horizon and γ), in
    order: e.g. each task's post-update rollouts, run at its own adapted weights."""
    if not parts or any(p.discount != parts[0].discount for p in parts):
        raise ConfigError("concatenate needs at least one Trajectories, all with the same discount")
    return Trajectories(
        obs=torch.cat([p.obs for p in parts]),
        actions=torch.cat([p.actions for p in parts]),
        rewards=torch.cat([p.rewards for p in parts]),
        mask=torch.cat([p.mask for p in parts]),
        returns=torch.cat([p.returns for p in parts]),
        discount=parts[0].discount,
    )


def returns_to_go(rewards: Tensor, mask: Tensor, discount: float = DISCOUNT) -> Tensor:
    """``R_t = m_t (r_t + γ R_{t+1})``, ``R_H = 0``, along the last axis: ``(..., H) -> (..., H)``.

    The backward recursion of rllab's ``discount_cumsum`` (scipy's ``lfilter``), step by step
    so that it rounds as that does; a masked step (after the trajectory ended) has return 0,
    so it adds nothing to the steps before it.
    """
    if not 0.0 <= discount <= 1.0:
        raise ConfigError(f"discount must be in [0, 1]; got {discount}")
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = mask[..., t] * (rewards[..., t] + discount * running)
        returns[..., t] = running
    return returns


@torch.no_grad()
def rollout(
    policy: GaussianMLPPolicy,
    params: Params | list[Params],
    env: TaskEnvironment,
    tasks: Tensor,
    *,
    generator: torch.Generator | None = None,
    discount: float = DISCOUNT,
    shard: TaskShard | None = None,
) -> Trajectories:
    """Run ``policy`` at the weights ``params`` in ``env`` for ``env.horizon`` steps, for
    ``env.envs_per_task`` trajectories of each task in ``tasks`` (``env.sample_tasks``; for
    2D navigation the goals ``(tasks, 2)``).

    ``params`` is one set of weights for every task (the meta-parameters before adaptation),
    or a list of one set per task (each task's adapted weights θ'_i): either way every task
    steps together, one environment step for the whole meta-batch, and the noise of a step
    is one draw of the batch's shape, so the draws do not depend on which form ``params``
    takes. Actions are drawn with ``generator``, which must live on the tasks' device;
    the same generator state gives the same trajectories. Nothing is differentiable: the loss
    recomputes ``log π`` from ``obs`` and ``actions`` at whatever weights it needs.

    ``shard``: ``tasks`` are this process's rows of a larger meta-batch (torchrun); the initial
    states and the noise are drawn for the whole batch and these rows kept
    (:mod:`mnemeta.rl.shard`), so each task's trajectories are those one process would run.
    """
    obs = env.reset(tasks, generator=generator, shard=shard)
    all_obs, all_actions, all_rewards, all_mask = [], [], [], []
    done = torch.zeros(obs.shape[:2], dtype=torch.bool, device=obs.device)
    for _ in range(env.horizon):
        actions = _sample(policy, params, obs, generator, shard)
        all_obs.append(obs)
        all_actions.append(actions)
        all_mask.append((~done).to(obs.dtype))
        obs, reward, done = env.step(actions)
        all_rewards.append(reward)
    mask = torch.stack(all_mask, dim=2)
    rewards = torch.stack(all_rewards, dim=2)
    return Trajectories(
        obs=torch.stack(all_obs, dim=2),
        actions=torch.stack(all_actions, dim=2),
        rewards=rewards,
        mask=mask,
        returns=returns_to_go(rewards, mask, discount),
        discount=discount,
    )


def _sample(
    policy: GaussianMLPPolicy,
    params: Params | list[Params],
    obs: Tensor,
    generator: torch.Generator | None,
    shard: TaskShard | None,
) -> Tensor:
    """Actions for ``obs`` ``(tasks, n, obs_size)``: ``μ + σ ⊙ ε``, ε drawn for the whole
    batch at once (as :meth:`GaussianMLPPolicy.sample`), with one set of weights or one per
    task."""
    if isinstance(params, dict):
        mean, log_std = policy.distribution(params, obs)
    else:
        if len(params) != obs.shape[0]:
            raise ConfigError(f"rollout got {len(params)} sets of weights for {obs.shape[0]} tasks")
        dists = [policy.distribution(p, obs[i : i + 1]) for i, p in enumerate(params)]
        mean = torch.cat([m for m, _ in dists])
        log_std = torch.stack([s for _, s in dists]).unsqueeze(1)  # (tasks, 1, action_size)
    eps = normal(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype, shard=shard)
    return mean + torch.exp(log_std) * eps
