"""RL² (Duan et al. 2016): a recurrent policy whose hidden state, kept across the episodes of a
trial, is the fast learner; the slow learner that trains its weights is PPO.

One meta-iteration (:meth:`RL2.train_iteration`):

1. draw ``meta_batch`` tasks from :func:`~mnemeta.algorithms.meta_rl.iteration_generator`;
2. run ``env.envs_per_task`` trials of ``trial_episodes`` episodes for each
   (:func:`~mnemeta.rl.trials.trial_rollout`: memory zero at a trial's start, kept across its
   episodes);
3. values from the critic, GAE(λ) advantages over each whole trial (the trial is one episode of
   the meta-MDP: :func:`~mnemeta.rl.ppo.gae`), advantages normalised over the batch;
4. ``ppo_epochs`` passes of PPO's clipped surrogate + value loss − entropy bonus, in
   ``minibatches`` mini-batches of whole trials (a recurrent policy must be re-run from each
   trial's start, so a mini-batch holds trials, not steps), Adam, gradients clipped.

The paper trained with TRPO; PPO is the slow learner of garage's ``RL2PPO``, and needs no
conjugate gradient through a recurrent network. Every draw of an iteration comes from its
generator, so an iteration is a pure function of (weights, Adam state, seed, iteration).

γ is the environment's (``[rl] discount``, given through the build context), as for MAML-RL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mnemeta.algorithms.meta_rl import iteration_generator
from mnemeta.checks import checked
from mnemeta.errors import ConfigError
from mnemeta.registry import LEARNERS, LearnerConfig, LearnerSpec
from mnemeta.rl import ppo
from mnemeta.rl.environment import TaskEnvironment
from mnemeta.rl.recurrent_policy import RecurrentGaussianPolicy
from mnemeta.rl.shard import TaskShard, sum_gradients, total
from mnemeta.rl.trials import Trials, trial_rollout


@dataclass(frozen=True)
class EpisodePaths:
    """One episode of each trial: ``obs`` ``(tasks, trials, horizon, obs_size)`` and ``mask``
    ``(tasks, trials, horizon)``, what :func:`~mnemeta.recipes.plots.plot_navigation_trajectories`
    draws."""

    obs: Tensor
    mask: Tensor


@dataclass
class RL2Config(LearnerConfig):
    """RL² with PPO; defaults from garage's ``RL2PPO`` examples and the PPO paper's MuJoCo
    settings, except where a comment says otherwise."""

    hidden: int = checked(64, ge=1)  # GRU units (garage's RL² examples: hidden_dim=64)
    trial_episodes: int = checked(2, ge=1)  # episodes per trial: the paper's navigation, 2
    gae_lambda: float = checked(0.95, ge=0, le=1)  # garage RL2PPO and PPO's MuJoCo runs
    # Adam. 3e-3, not PPO's usual 3e-4: in a probe on navigation (seed 0, 70 iterations of
    # 20 tasks x 10 trials) 1e-3 was still on the goal-agnostic plateau (return ≈ -37 per
    # episode) where 3e-3 had reached ≈ -5.5; the KL per update stayed ≈ 0.01.
    lr: float = checked(3e-3, gt=0)
    ppo_epochs: int = checked(4, ge=1)  # passes over each batch of trials
    minibatches: int = checked(4, ge=1)  # ... each split into this many mini-batches of trials
    ppo_clip: float = checked(0.2, gt=0, lt=1)  # ε of the clipped surrogate (the PPO paper)
    # No bonus: σ is learned and starts at 1 (displacements clipped at ±0.1 for a = ±1); to
    # stop inside navigation's 0.01 box it must shrink, which a bonus would resist.
    entropy_coef: float = checked(0.0, ge=0)
    # The critic has its own GRU and Adam scales each weight's step, so this weight mostly sets
    # the critic's share of its gradient clip; 0.5 is PPO's usual value.
    value_coef: float = checked(0.5, ge=0)
    grad_clip: float = checked(0.5, ge=0)  # max gradient norm, actor and critic apart; 0: off
    init_std: float = checked(1.0, gt=0)  # σ₀ of the Gaussian (rllab's default)


class RL2(nn.Module):
    """The RL² learner (:class:`~mnemeta.algorithms.meta_rl.MetaRLLearner`).

    Args:
        config: :class:`RL2Config`.
        observation_size / action_size: the environment's widths (2 and 2 for navigation).

    Attributes:
        policy: the :class:`~mnemeta.rl.recurrent_policy.RecurrentGaussianPolicy`.
        optimizer: Adam over the policy's weights (its state: :meth:`training_state`).
    """

    def __init__(
        self,
        config: RL2Config,
        *,
        observation_size: int,
        action_size: int,
        discount: float = 0.99,
    ) -> None:
        super().__init__()
        self.config = config
        self.discount = discount  # γ over the whole trial (``[rl] discount``)
        self.policy = RecurrentGaussianPolicy(
            observation_size, action_size, config.hidden, init_std=config.init_std
        )
        # eps 1e-5: the PPO baselines' Adam, less jumpy than torch's 1e-8 when a gradient is ~0.
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, eps=1e-5)
        p = self.policy
        self._actor_params = [*p.actor.parameters(), *p.mean.parameters(), p.log_std]
        self._critic_params = [*p.critic.parameters(), *p.value.parameters()]

    def _rollout(
        self,
        env: TaskEnvironment,
        tasks: Tensor,
        generator: torch.Generator,
        shard: TaskShard | None = None,
    ) -> Trials:
        return trial_rollout(
            self.policy,
            env,
            tasks,
            episodes=self.config.trial_episodes,
            generator=generator,
            shard=shard,
        )

    def train_iteration(
        self,
        env: TaskEnvironment,
        *,
        seed: int,
        iteration: int,
        meta_batch: int,
        shard: TaskShard | None = None,
    ) -> dict[str, float]:
        """One meta-iteration (see the module). Returns ``"return"`` (the mean undiscounted
        return per episode over every trial), ``"return_episode_<k>"``, the losses, the mean
        approximate KL and clip fraction over the updates, and σ.

        With a ``shard`` (torchrun) this rank runs its tasks' trials; the advantage and value
        statistics are the whole batch's, every mini-batch is the one-process mini-batch (the
        permutation is drawn over the whole batch's trials, each rank evaluating its own), its
        losses divided by the mini-batch's steps over every rank, and the gradients summed
        before each Adam step (:mod:`mnemeta.rl.shard`)."""
        cfg = self.config
        g = iteration_generator(seed, iteration)
        dtype = self.policy.log_std.dtype
        device = self.policy.log_std.device
        tasks = env.sample_tasks(meta_batch, generator=g, dtype=dtype).to(device)
        if shard is not None:
            tasks = shard.part(tasks)
        trials = self._rollout(env, tasks, g, shard)
        per_task = trials.rewards.shape[1]
        n_own = trials.rewards.shape[0] * per_task  # this rank's trials (all, in one process)
        n_seq = meta_batch * per_task  # the batch's trials
        first = 0 if shard is None else shard.lo * per_task  # this rank's first, in batch order
        if cfg.minibatches > n_seq:
            raise ConfigError(
                f"model.minibatches={cfg.minibatches} is more than the {n_seq} trials of an "
                "iteration (meta_batch x rl.trajectories); lower it or sample more trials"
            )
        with torch.no_grad():
            _, _, values = self.policy.evaluate(trials.inputs, trials.actions, trials.mask)
        adv, returns = ppo.gae(
            trials.rewards, values, trials.mask, discount=self.discount, lam=cfg.gae_lambda
        )
        adv = ppo.normalize(adv, trials.mask, shard=shard)
        self.policy.update_value_statistics(returns, trials.mask, shard=shard)
        targets = (returns - self.policy.value_mean) / self.policy.value_std

        def flat(x: Tensor) -> Tensor:
            return x.reshape(n_own, *x.shape[2:])

        inputs, actions, mask = flat(trials.inputs), flat(trials.actions), flat(trials.mask)
        old_logp, adv, targets = flat(trials.log_probs), flat(adv), flat(targets)
        sums = {"policy_loss": 0.0, "value_loss": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0}
        updates = 0
        weights = list(self.policy.parameters())
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(n_seq, generator=g)
            for batch_idx in perm.tensor_split(cfg.minibatches):
                # This rank's trials of the mini-batch, in its order (all of it in one process).
                idx = batch_idx
                if shard is not None:
                    idx = batch_idx[(batch_idx >= first) & (batch_idx < first + n_own)] - first
                m = mask[idx]
                steps = None if shard is None else total(m.sum(), shard)
                self.optimizer.zero_grad(set_to_none=True)
                if idx.numel() > 0:
                    logp, normalized, _ = self.policy.evaluate(inputs[idx], actions[idx], m)
                    pg, clip_frac, kl = ppo.clipped_surrogate(
                        logp, old_logp[idx], adv[idx], m, clip=cfg.ppo_clip, steps=steps
                    )
                    vl = ppo.value_loss(normalized, targets[idx], m, steps)
                    entropy = self.policy.entropy()
                    if steps is not None:  # the bonus once over the ranks: each its steps' share
                        entropy = entropy * (m.sum() / steps)
                    loss = pg + cfg.value_coef * vl - cfg.entropy_coef * entropy
                    loss.backward()
                else:  # none of this mini-batch's trials are this rank's
                    pg = vl = kl = clip_frac = torch.zeros((), dtype=dtype, device=device)
                pg, vl, kl, clip_frac = sum_gradients(
                    weights, shard, extras=[pg, vl, kl, clip_frac]
                )
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self._actor_params, cfg.grad_clip)
                    nn.utils.clip_grad_norm_(self._critic_params, cfg.grad_clip)
                self.optimizer.step()
                sums["policy_loss"] += float(pg.detach())
                sums["value_loss"] += float(vl.detach())
                sums["approx_kl"] += float(kl)
                sums["clip_fraction"] += float(clip_frac)
                updates += 1
        if shard is None:
            per_episode = trials.episode_returns().mean(dim=(0, 1))
        else:
            per_episode = total(trials.episode_returns().sum(dim=(0, 1)), shard) / n_seq
        metrics = {"return": float(per_episode.mean())}
        metrics.update({f"return_episode_{k + 1}": float(r) for k, r in enumerate(per_episode)})
        metrics.update({k: v / updates for k, v in sums.items()})
        metrics["entropy"] = float(self.policy.entropy().detach())
        metrics["std"] = float(self.policy.current_log_std().detach().exp().mean())
        return metrics

    @torch.no_grad()
    def example_trajectories(
        self, env: TaskEnvironment, tasks: Tensor, *, generator: torch.Generator
    ) -> dict[str, EpisodePaths]:
        """One trial per task, episode by episode, for the navigation plot (the paths of
        episode 1, exploring, and of episode 2, from memory)."""
        trials = trial_rollout(
            self.policy, env, tasks, episodes=self.config.trial_episodes, generator=generator
        )
        obs, mask = trials.by_episode(trials.obs), trials.by_episode(trials.mask)
        return {
            f"episode {e + 1}": EpisodePaths(obs[:, :, e], mask[:, :, e])
            for e in range(trials.episodes)
        }

    @torch.no_grad()
    def evaluate(
        self,
        env: TaskEnvironment,
        tasks: Tensor,
        *,
        generator: torch.Generator,
        shard: TaskShard | None = None,
    ) -> dict[str, Tensor]:
        """``env.envs_per_task`` trials of each task in ``tasks``: ``{"episode_<k>": (tasks,)}``,
        the mean over the task's trials of episode ``k``'s undiscounted return, in episode
        order; then ``"success_episode_<k>"``, the fraction of trials that succeeded in episode
        ``k``, where the environment reports success. The weights are not touched. A
        ``shard``'s tasks are run with the whole test's draws."""
        dtype = self.policy.log_std.dtype
        trials = self._rollout(env, tasks.to(self.policy.log_std), generator, shard)
        per_task = trials.episode_returns().mean(dim=1)  # (tasks, episodes)
        out = {f"episode_{k + 1}": per_task[:, k] for k in range(trials.episodes)}
        if trials.success is not None:
            rate = trials.success.to(dtype).mean(dim=1)
            out.update({f"success_episode_{k + 1}": rate[:, k] for k in range(trials.episodes)})
        return out

    def training_state(self) -> dict[str, Any]:
        """Adam's state (the weights and PopArt's statistics are in the ``state_dict``)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`training_state`."""
        if "optimizer" not in state:
            raise ConfigError(
                "RL2 training state has no 'optimizer' entry; pass what training_state() returned"
            )
        self.optimizer.load_state_dict(state["optimizer"])


LEARNERS.register(
    LearnerSpec(
        "rl2",
        RL2Config,
        "RL²: a GRU policy whose memory spans a trial's episodes, trained with PPO (Duan 2016)",
        build=lambda cfg, ctx: RL2(
            cfg,
            observation_size=ctx.input_shape[0],
            action_size=ctx.outputs,
            discount=ctx.discount,
        ),
        recipe="rl",
        backbone=False,
    )
)
