"""RL² trials: several consecutive episodes of one task, with the policy's memory kept across
them (Duan et al. 2016, §2.2 and Figure 1).

A *trial* is ``episodes`` episodes of ``env.horizon`` steps each on the same task. The hidden
state is zero at the start of a trial and is **not** reset between its episodes: what the
policy found out in episode 1 is what lets it do better in episode 2. Each task of a meta-batch
runs ``env.envs_per_task`` independent trials side by side, so every tensor is ``(tasks,
trials, steps, ...)`` with ``steps = episodes · horizon``, time running through the episodes.

Masking follows :mod:`mnemeta.rl.rollout`: after an episode ends early (Navigation2D reaches its
goal), its remaining steps have ``mask`` 0 and reward 0. Those steps are not part of the trial:
the policy's hidden state and its previous action / reward / done inputs stay frozen through
them, as if the next episode started right after the one that ended (which is what a sampler
that cuts the path does). The first step of every episode after the first sees the last real
step's action and reward and ``d = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.errors import ConfigError
from mnemeta.rl.environment import TaskEnvironment
from mnemeta.rl.recurrent_policy import RecurrentGaussianPolicy, rl2_input
from mnemeta.rl.shard import TaskShard, normal


@dataclass(frozen=True)
class Trials:
    """A meta-batch of RL² trials; ``steps = episodes · horizon``.

    Attributes:
        inputs: ``(tasks, trials, steps, input_size)``: what the policy saw,
            ``[o_t, a_{t-1}, r_{t-1}, d_{t-1}]`` (PPO re-runs the GRU on them).
        obs: ``(tasks, trials, steps, obs_size)``.
        actions: ``(tasks, trials, steps, action_size)``, before the environment's clip.
        rewards: ``(tasks, trials, steps)``, 0 where masked.
        mask: ``(tasks, trials, steps)``, 1 for a step taken before its episode ended.
        log_probs: ``(tasks, trials, steps)``, ``log π_old(a | x)`` at sampling time.
        episodes: episodes per trial.
        success: ``None``, or bool ``(tasks, trials, episodes)``: ``env.success`` after each
            episode, where the environment reports one.
        hidden: ``None``, or ``(tasks, trials, steps, hidden)``: the hidden state each step
            started from (``record_hidden=True``; for inspection and tests).
    """

    inputs: Tensor
    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    log_probs: Tensor
    episodes: int
    success: Tensor | None = None
    hidden: Tensor | None = None

    @property
    def horizon(self) -> int:
        return self.rewards.shape[2] // self.episodes

    def by_episode(self, x: Tensor) -> Tensor:
        """``(tasks, trials, steps, ...)`` -> ``(tasks, trials, episodes, horizon, ...)``."""
        return x.reshape(*x.shape[:2], self.episodes, self.horizon, *x.shape[3:])

    def episode_returns(self) -> Tensor:
        """The undiscounted return of each episode, ``(tasks, trials, episodes)``."""
        return self.by_episode(self.rewards).sum(dim=-1)


def _normal(like: Tensor, generator: torch.Generator | None, shard: TaskShard | None) -> Tensor:
    """``ε ~ N(0, I)`` shaped as ``like``, drawn on the generator's device and moved to
    ``like``'s: a CPU generator (:func:`~mnemeta.algorithms.meta_rl.iteration_generator`) then
    drives a policy on a GPU with the same draws as on the CPU. For a ``shard`` of a meta-batch,
    drawn for the whole batch and its rows kept (:func:`mnemeta.rl.shard.normal`)."""
    device = generator.device if generator is not None else like.device
    eps = normal(like.shape, generator=generator, device=device, dtype=like.dtype, shard=shard)
    return eps.to(like.device)


@torch.no_grad()
def trial_rollout(
    policy: RecurrentGaussianPolicy,
    env: TaskEnvironment,
    tasks: Tensor,
    *,
    episodes: int,
    generator: torch.Generator | None = None,
    record_hidden: bool = False,
    shard: TaskShard | None = None,
) -> Trials:
    """Run ``env.envs_per_task`` trials of ``episodes`` episodes for each task of ``tasks``
    (``env.sample_tasks``), the hidden state zero at each trial's start and carried across its
    episodes (see the module).

    ``env.reset(tasks, generator=generator)`` starts every episode; actions ``a = μ + σ ε`` draw
    ``ε`` from ``generator`` at every step (masked steps too, so the draws do not depend on when
    episodes end); the tasks' device is the environment's and the policy's. Nothing is
    differentiable: PPO re-evaluates ``inputs`` at its own weights.

    ``shard``: ``tasks`` are this process's rows of a larger meta-batch (torchrun); every draw
    is made for the whole batch and these rows kept, so the trials are those one process runs.
    """
    if episodes < 1:
        raise ConfigError(f"a trial needs episodes >= 1; got {episodes}")
    dtype = policy.log_std.dtype
    if tasks.dtype != dtype:
        raise ConfigError(
            f"tasks are {tasks.dtype} but the policy is {dtype}; draw them with "
            f"env.sample_tasks(..., dtype={dtype})"
        )
    all_inputs, all_obs, all_actions, all_rewards, all_mask, all_logp, all_hidden = (
        [] for _ in range(7)
    )
    successes: list[Tensor] = []
    h: Tensor | None = None
    prev_a = prev_r = prev_d = torch.zeros(0)
    for _ in range(episodes):
        obs = env.reset(tasks, generator=generator, shard=shard)
        lead = obs.shape[:2]
        if h is None:  # the start of the trial: a zero state and zero previous step
            h = policy.initial_state(*lead, like=obs)
            prev_a = obs.new_zeros(*lead, policy.action_size)
            prev_r = obs.new_zeros(lead)
            prev_d = obs.new_zeros(lead)
        done = torch.zeros(lead, dtype=torch.bool, device=obs.device)
        for _ in range(env.horizon):
            active = ~done
            x = rl2_input(obs, prev_a, prev_r, prev_d)
            mean, log_std, h_new = policy.step(x, h)
            eps = _normal(mean, generator, shard)
            action = mean + torch.exp(log_std) * eps
            all_inputs.append(x)
            all_obs.append(obs)
            all_actions.append(action)
            all_mask.append(active.to(dtype))
            all_logp.append(policy.log_prob(mean, log_std, action))
            if record_hidden:
                all_hidden.append(h)
            obs, reward, done = env.step(action)
            all_rewards.append(reward)
            # Only the steps of the trial move the memory and the previous-step inputs; a masked
            # step (its episode already over) leaves them as the episode's last real step set them.
            keep = active.unsqueeze(-1)
            h = torch.where(keep, h_new, h)
            prev_a = torch.where(keep, action, prev_a)
            prev_r = torch.where(active, reward, prev_r)
            prev_d = torch.where(active, done.to(dtype), prev_d)
        if env.success is not None:
            successes.append(env.success.clone())
    return Trials(
        inputs=torch.stack(all_inputs, dim=2),
        obs=torch.stack(all_obs, dim=2),
        actions=torch.stack(all_actions, dim=2),
        rewards=torch.stack(all_rewards, dim=2),
        mask=torch.stack(all_mask, dim=2),
        log_probs=torch.stack(all_logp, dim=2),
        episodes=episodes,
        success=torch.stack(successes, dim=2) if successes else None,
        hidden=torch.stack(all_hidden, dim=2) if record_hidden else None,
    )
