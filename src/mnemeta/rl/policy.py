"""A diagonal Gaussian policy over an MLP mean, callable with a dict of weights.

``π_θ(a | s) = N(a; μ_θ(s), diag(σ²))``: the mean is an :class:`~mnemeta.nn.MLP` of the
observation (2 × 100 ReLU hidden layers for 2D navigation, Finn et al. 2017 §5.3), the
log-std a learned vector that does not depend on the state, as in rllab's
``GaussianMLPPolicy`` with ``adaptive_std=False`` and maml_rl's
``MAMLGaussianMLPPolicy`` (``sandbox/rocky/tf/policies/maml_minimal_gauss_mlp_policy.py``):
``init_std=1``, ``min_std=1e-6`` (the log-std is clamped below at ``log 1e-6``), Xavier-uniform
weights and zero biases.

Every method takes the weights ``params`` explicitly (a dict name -> tensor, as
``dict(policy.named_parameters())``), so that MAML's inner loop can evaluate it at adapted
weights with ``torch.func.functional_call``; ``forward`` is what ``functional_call`` runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mnemeta.errors import ConfigError
from mnemeta.nn.backbones import MLP

Params = dict[str, Tensor]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """``obs (..., observation_size) -> (mean (..., action_size), log_std (action_size,))``.

    Args:
        observation_size / action_size: 2 and 2 for 2D navigation.
        hidden: the MLP's hidden widths; ``(100, 100)`` as in the paper's navigation runs.
        init_std: σ at initialisation (rllab's default, 1).
        min_std: the floor of σ (rllab's default, 1e-6): below it the log-std is clamped, and
            gets no gradient, as rllab's ``tf.maximum``.
    """

    def __init__(
        self,
        observation_size: int,
        action_size: int,
        hidden: Sequence[int] = (100, 100),
        *,
        init_std: float = 1.0,
        min_std: float = 1e-6,
    ) -> None:
        super().__init__()
        if observation_size < 1 or action_size < 1:
            raise ConfigError(
                f"GaussianMLPPolicy needs observation_size and action_size >= 1; got "
                f"{observation_size} and {action_size}"
            )
        if not 0 < min_std <= init_std:
            raise ConfigError(f"need 0 < min_std <= init_std; got {min_std} and {init_std}")
        self.observation_size, self.action_size = observation_size, action_size
        self.mean = MLP(observation_size, hidden, action_size)
        for layer in self.mean.modules():
            if isinstance(layer, nn.Linear):
                # rllab/maml_rl's initialisation (Xavier-uniform weights, zero biases), not
                # torch's default Kaiming-uniform with a fan-in bias.
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.log_std = nn.Parameter(torch.full((action_size,), math.log(init_std)))
        self.min_log_std = math.log(min_std)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs (..., observation_size)`` -> ``(mean (..., action_size), log_std
        (action_size,))``; any leading shape (tasks, trajectories, steps) is kept."""
        lead = obs.shape[:-1]
        mean = self.mean(obs.reshape(-1, obs.shape[-1])).reshape(*lead, self.action_size)
        return mean, self.log_std.clamp(min=self.min_log_std)

    def distribution(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)`` of π at the weights ``params``, as :meth:`forward`."""
        mean, log_std = functional_call(self, params, (obs,))
        return mean, log_std

    def log_prob(self, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
        """``log π(a | s)`` summed over the action's coordinates: ``obs (..., obs_size)``,
        ``actions (..., action_size)`` -> ``(...)``.

        ``Σ_j [-½ ((a_j - μ_j) / σ_j)² - log σ_j - ½ log 2π]``, the density of the unclipped
        action the policy drew (the environment clips it; the likelihood does not see that).
        """
        mean, log_std = self.distribution(params, obs)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(dim=-1)

    def sample(
        self, params: Params, obs: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """``a = μ(s) + σ ⊙ ε``, ``ε ~ N(0, I)`` drawn from ``generator``: ``(..., action_size)``.

        Gradients flow into μ and σ (the reparameterised sample); a rollout calls it under
        ``torch.no_grad``.
        """
        mean, log_std = self.distribution(params, obs)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(log_std) * eps

    def params(self) -> Params:
        """The policy's own weights as a dict (the meta-parameters, not a copy)."""
        return dict(self.named_parameters())
