"""The recurrent Gaussian policy of RL² (Duan et al. 2016, §2.2): a GRU whose hidden state is
the memory of a trial.

At step ``t`` the network sees ``x_t = [o_t, a_{t-1}, r_{t-1}, d_{t-1}]``: the observation, and
the previous step's action, reward and termination flag (the paper's input; garage's ``RL2Env``
appends the same three to the observation). The hidden state is zero at the start of a trial and
carried across the episodes inside it, so what the policy learned about the task in episode 1
(where the goal is) is still there in episode 2; the flag ``d = 1`` at the first step of a new
episode tells it that the world was reset.

Heads and choices, and why:

- **Actor**: a GRU (``hidden`` units; 64 by default, as garage's RL² examples'
  ``GaussianGRUPolicy(hidden_dim=64)``: 2D navigation's inputs are 6 numbers and what must be
  remembered is a goal estimate, and 64 units keep a trial of 200 steps cheap on one CPU
  thread), a linear mean head, and a state-independent learned log-std (as
  :class:`~mnemeta.rl.policy.GaussianMLPPolicy`, rllab's ``adaptive_std=False``), σ₀ = 1.
- **Critic**: a *separate* GRU of the same size with a linear value head. Sharing the actor's GRU
  would let the value loss — returns of tens of units on navigation — pull the representation
  the policy acts from; two networks cost one more GRU pass and keep the policy gradient clean.
- **Value normalisation** (PopArt, van Hasselt et al. 2016): the value head predicts
  ``(V - μ) / σ`` with ``(μ, σ)`` running statistics of the value targets (buffers, so they are
  in the ``state_dict``). With Adam, whose steps are about ``lr`` per weight whatever the loss
  scale, a head that must output -40 from a zero initialisation would need thousands of
  updates; :meth:`update_value_statistics` moves ``(μ, σ)`` and rescales the head so that its
  predictions are unchanged ("preserving outputs precisely").

:meth:`step` advances a batch of trials by one time step (the rollout); :meth:`evaluate`
re-runs whole stored trials from a zero state (PPO's update), skipping the steps that the
rollout masked (after an episode ended early), exactly as the rollout skipped them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mnemeta.errors import ConfigError
from mnemeta.rl.shard import TaskShard, total

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
HIDDEN = 64  # garage's RL² examples (GaussianGRUPolicy hidden_dim=64)
VALUE_STATS_DECAY = 0.1  # PopArt's β per update: the weight of the newest targets' moments


def rl2_input(obs: Tensor, prev_action: Tensor, prev_reward: Tensor, prev_done: Tensor) -> Tensor:
    """``[o_t, a_{t-1}, r_{t-1}, d_{t-1}]``: ``(..., obs)``, ``(..., act)``, ``(...)``, ``(...)``
    -> ``(..., obs + act + 2)``; ``prev_done`` may be bool."""
    return torch.cat(
        [
            obs,
            prev_action,
            prev_reward.unsqueeze(-1),
            prev_done.to(obs.dtype).unsqueeze(-1),
        ],
        dim=-1,
    )


def compact_order(mask: Tensor) -> Tensor:
    """The indices that move each sequence's unmasked steps to its front, in time order:
    ``mask (..., T)`` -> int64 ``(..., T)``. A stable sort of ``mask == 0`` (False first)."""
    return torch.argsort((mask == 0).to(torch.int8), dim=-1, stable=True)


class RecurrentGaussianPolicy(nn.Module):
    """``π(a_t | x_1..x_t) = N(μ(h_t), diag σ²)`` with ``h_t = GRU(x_t, h_{t-1})``; a critic
    ``V(x_1..x_t)`` on its own GRU.

    Args:
        observation_size / action_size: 2 and 2 for 2D navigation.
        hidden: GRU units of the actor and of the critic.
        init_std / min_std: σ at initialisation and its floor (the log-std is clamped at
            ``log min_std``), rllab's defaults as in :class:`~mnemeta.rl.policy.GaussianMLPPolicy`.

    Shapes: a hidden state is ``(*lead, hidden)`` for any leading shape (``(tasks, trials)`` in
    a rollout); an input ``(*lead, input_size)`` with ``input_size = observation_size +
    action_size + 2``.
    """

    value_mean: Tensor
    value_std: Tensor
    value_updates: Tensor

    def __init__(
        self,
        observation_size: int,
        action_size: int,
        hidden: int = HIDDEN,
        *,
        init_std: float = 1.0,
        min_std: float = 1e-6,
    ) -> None:
        super().__init__()
        if observation_size < 1 or action_size < 1 or hidden < 1:
            raise ConfigError(
                f"RecurrentGaussianPolicy needs observation_size, action_size and hidden >= 1; "
                f"got {observation_size}, {action_size} and {hidden}"
            )
        if not 0 < min_std <= init_std:
            raise ConfigError(f"need 0 < min_std <= init_std; got {min_std} and {init_std}")
        self.observation_size, self.action_size, self.hidden = observation_size, action_size, hidden
        self.input_size = observation_size + action_size + 2
        self.actor = nn.GRU(self.input_size, hidden, batch_first=True)
        self.critic = nn.GRU(self.input_size, hidden, batch_first=True)
        self.mean = nn.Linear(hidden, action_size)
        self.value = nn.Linear(hidden, 1)
        # A small mean head: the first actions are σ₀-noise around ~0, not a large push in a
        # random direction that every task would first have to unlearn.
        nn.init.xavier_uniform_(self.mean.weight, gain=0.1)
        nn.init.zeros_(self.mean.bias)
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)
        self.log_std = nn.Parameter(torch.full((action_size,), math.log(init_std)))
        self.min_log_std = math.log(min_std)
        self.register_buffer("value_mean", torch.zeros(()))
        self.register_buffer("value_std", torch.ones(()))
        self.register_buffer("value_updates", torch.zeros((), dtype=torch.int64))

    def initial_state(self, *lead: int, like: Tensor) -> Tensor:
        """The zero hidden state of a fresh trial, ``(*lead, hidden)``, in ``like``'s dtype and
        device."""
        return like.new_zeros(*lead, self.hidden)

    def current_log_std(self) -> Tensor:
        """``log σ`` clamped at its floor, ``(action_size,)``."""
        return self.log_std.clamp(min=self.min_log_std)

    def step(self, inputs: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One time step of the actor for a batch: ``inputs (*lead, input_size)``, ``hidden
        (*lead, hidden)`` -> ``(mean (*lead, action_size), log_std (action_size,), new hidden
        (*lead, hidden))``. The same ``nn.GRU`` as :meth:`evaluate`, run for one step."""
        lead = inputs.shape[:-1]
        x = inputs.reshape(-1, 1, self.input_size)
        h0 = hidden.reshape(1, -1, self.hidden)
        out, _ = self.actor(x, h0)
        h = out[:, 0].reshape(*lead, self.hidden)
        return self.mean(h), self.current_log_std(), h

    def log_prob(self, mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
        """``log N(a; μ, diag σ²)`` summed over the action's coordinates: ``(...)``."""
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(dim=-1)

    def entropy(self) -> Tensor:
        """The Gaussian's entropy ``Σ_j (log σ_j + ½ log 2πe)``, a scalar: σ does not depend on
        the state, so neither does the entropy."""
        return (self.current_log_std() + _HALF_LOG_2PI + 0.5).sum()

    def denormalize(self, normalized: Tensor) -> Tensor:
        """The value head's output in units of return: ``μ + σ · v̂``."""
        return self.value_mean + self.value_std * normalized

    def evaluate(
        self, inputs: Tensor, actions: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Re-run whole trials from a zero state: ``inputs (*lead, T, input_size)``, ``actions
        (*lead, T, action_size)``, ``mask (*lead, T)`` -> ``(log_probs (*lead, T),
        normalized values (*lead, T), values (*lead, T))``, 0 at masked steps.

        The rollout froze the hidden state at masked steps (they are not part of the trial), so
        here each sequence's unmasked steps are first gathered to its front
        (:func:`compact_order`) and one ``nn.GRU`` call runs them; the padding after them
        cannot reach earlier outputs (the GRU is causal), and results are scattered back.
        """
        lead, t = inputs.shape[:-2], inputs.shape[-2]
        x = inputs.reshape(-1, t, self.input_size)
        a = actions.reshape(-1, t, self.action_size)
        m = mask.reshape(-1, t)
        order = compact_order(m)
        inverse = torch.argsort(order, dim=-1)
        xc = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))
        ac = torch.gather(a, 1, order.unsqueeze(-1).expand_as(a))
        h_actor, _ = self.actor(xc)
        h_critic, _ = self.critic(xc)
        log_probs = self.log_prob(self.mean(h_actor), self.current_log_std(), ac)
        normalized = self.value(h_critic).squeeze(-1)

        def back(y: Tensor) -> Tensor:
            return (torch.gather(y, 1, inverse) * m).reshape(*lead, t)

        values = self.denormalize(normalized)
        return back(log_probs), back(normalized), back(values)

    @torch.no_grad()
    def update_value_statistics(
        self, targets: Tensor, mask: Tensor, *, shard: TaskShard | None = None
    ) -> None:
        """PopArt: move ``(μ, σ)`` towards the moments of ``targets`` at unmasked steps, then
        rescale the value head so that ``μ + σ · v̂`` is unchanged for every input.

        β is ``max(0.1, 1 / (updates + 1))``: the first call takes the targets' own moments, the
        later ones an exponential average. ``σ`` is floored at 1e-4. With a ``shard`` (torchrun)
        the moments are the whole batch's, summed over the ranks, so every rank moves the same.
        """
        n = total(mask.sum(), shard)
        mean = total((targets * mask).sum(), shard) / n
        second = total((targets.square() * mask).sum(), shard) / n
        beta = max(VALUE_STATS_DECAY, 1.0 / (int(self.value_updates) + 1))
        old_mean, old_std = self.value_mean.clone(), self.value_std.clone()
        old_second = old_std.square() + old_mean.square()
        new_mean = (1 - beta) * old_mean + beta * mean
        new_second = (1 - beta) * old_second + beta * second
        new_std = (new_second - new_mean.square()).clamp(min=1e-8).sqrt().clamp(min=1e-4)
        self.value.weight.mul_(old_std / new_std)
        self.value.bias.mul_(old_std).add_(old_mean - new_mean).div_(new_std)
        self.value_mean.copy_(new_mean)
        self.value_std.copy_(new_std)
        self.value_updates.add_(1)
