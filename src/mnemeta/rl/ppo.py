"""PPO's pieces (Schulman et al. 2017) for RL² trials, as pure functions of tensors.

- :func:`gae` — generalised advantage estimation (Schulman et al. 2016) **over a whole trial**.
  RL² treats a trial as one episode of the meta-MDP (Duan et al. 2016, §2.2: the objective is
  the expected total discounted reward of the trial, not of each episode), so discounting and
  bootstrapping run straight across the episode boundaries inside a trial: the last step of
  episode 1 bootstraps from the value of episode 2's first step. Only the trial's end is a
  terminal (value 0 after it). Masked steps (after an episode ended early) are skipped, as the
  rollout skipped them.
- :func:`clipped_surrogate` — ``L^CLIP``, the clipped likelihood-ratio objective (PPO eq. 7).
- :func:`value_loss` and :func:`masked_mean` — the critic's squared error and the averages,
  over unmasked steps only.

Shapes are ``(..., steps)``, time on the last axis.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mnemeta.errors import ConfigError
from mnemeta.rl.shard import TaskShard, total

ADV_EPS = 1e-8  # added to the advantages' std before dividing, as rllab and PPO's baselines


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, discount: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE(λ) advantages and λ-returns along the last axis, masked steps skipped.

    ``δ_t = r_t + γ V_{t'} - V_t`` with ``t'`` the next unmasked step (``V = 0`` after the last
    one: the end of the trial), ``A_t = δ_t + γ λ A_{t'}``; the returns (the critic's targets)
    are ``A_t + V_t``. Both are 0 at masked steps.

    Args:
        rewards / values / mask: ``(..., steps)``; ``mask`` 1 for a step of the trial.
        discount: γ; lam: λ (1: Monte-Carlo returns minus the value, 0: one-step TD errors).

    Returns ``(advantages, returns)``, each ``(..., steps)``, detached.
    """
    if not (0.0 <= discount <= 1.0 and 0.0 <= lam <= 1.0):
        raise ConfigError(f"discount and lam must be in [0, 1]; got {discount} and {lam}")
    rewards, values, mask = rewards.detach(), values.detach(), mask.detach()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[..., 0])
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        live = mask[..., t] > 0
        delta = rewards[..., t] + discount * next_value - values[..., t]
        adv = delta + discount * lam * running
        # A masked step passes the later step's quantities through unchanged.
        running = torch.where(live, adv, running)
        next_value = torch.where(live, values[..., t], next_value)
        advantages[..., t] = torch.where(live, adv, torch.zeros_like(adv))
    returns = (advantages + values) * mask
    return advantages, returns


def masked_mean(x: Tensor, mask: Tensor, steps: Tensor | None = None) -> Tensor:
    """``Σ m x / Σ m`` over all axes: a scalar. ``steps``: the denominator, when ``x`` is one
    rank's part of a batch whose unmasked steps are counted over every rank (torchrun)."""
    return (x * mask).sum() / (mask.sum() if steps is None else steps)


def normalize(
    advantages: Tensor, mask: Tensor, eps: float = ADV_EPS, *, shard: TaskShard | None = None
) -> Tensor:
    """``(A - mean) / (std + eps)`` over every unmasked step of the batch (population std), 0
    where masked: PPO's usual per-batch normalisation, so that ``ppo_clip`` and the entropy
    coefficient mean the same on every task family. With a ``shard`` (torchrun) the moments
    are the whole batch's, summed over the ranks."""
    steps = total(mask.sum(), shard)
    mean = total((advantages * mask).sum(), shard) / steps
    std = (total(((advantages - mean).square() * mask).sum(), shard) / steps).sqrt()
    return (advantages - mean) / (std + eps) * mask


def clipped_surrogate(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip: float,
    steps: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped loss ``-E[min(ρ A, clip(ρ, 1 - ε, 1 + ε) A)]``, ``ρ = π / π_old``, the mean
    over unmasked steps.

    Returns ``(loss, clip_fraction, approx_kl)``: the scalar loss (differentiable through
    ``log_probs``), the fraction of steps whose ratio is outside ``[1 - ε, 1 + ε]``, and the
    estimate ``E[(ρ - 1) - log ρ]`` of ``KL(π_old ‖ π)`` (non-negative; Schulman's "k3"), both
    detached. ``steps``: as for :func:`masked_mean` (each is then one rank's part).
    """
    if not clip > 0:
        raise ConfigError(f"ppo_clip must be > 0; got {clip}")
    log_ratio = log_probs - old_log_probs.detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask, steps)
    with torch.no_grad():
        outside = ((ratio - 1).abs() > clip).to(mask.dtype)
        clip_fraction = masked_mean(outside, mask, steps)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask, steps)
    return loss, clip_fraction, approx_kl


def value_loss(
    values: Tensor, targets: Tensor, mask: Tensor, steps: Tensor | None = None
) -> Tensor:
    """``½ E[(V - R)²]`` over unmasked steps, ``targets`` held constant: a scalar (``steps``:
    as for :func:`masked_mean`)."""
    return 0.5 * masked_mean((values - targets.detach()).square(), mask, steps)
