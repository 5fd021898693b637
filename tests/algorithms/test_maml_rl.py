"""MAML-RL's inner step: its meta-gradient against a hand-unrolled float64 computation.

The reference writes the policy's log-density by hand (matrix products, ReLU, the Gaussian
density) and unrolls θ' = θ - α ∇L_train(θ) with torch.autograd; no mnemeta code runs in it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mnemeta.algorithms.maml_rl import inner_step
from mnemeta.rl import GaussianMLPPolicy, Navigation2D, estimate_advantages, rollout, vpg_loss
from mnemeta.rl import sample_goals as goals_for

DT = torch.float64
TASKS, TRAJS, HORIZON, HIDDEN, ALPHA = 3, 4, 6, 5, 0.3

Params = dict[str, Tensor]


def _log_pi(w: Params, s: Tensor, a: Tensor) -> Tensor:
    h = torch.relu(s @ w["mean.layers.0.weight"].T + w["mean.layers.0.bias"])
    mu = h @ w["mean.layers.2.weight"].T + w["mean.layers.2.bias"]
    rho = w["log_std"]
    return (-0.5 * ((a - mu) / rho.exp()) ** 2 - rho - 0.5 * math.log(2 * math.pi)).sum(-1)


def _surrogate(w: Params, s: Tensor, a: Tensor, adv: Tensor, m: Tensor) -> Tensor:
    return -(_log_pi(w, s, a) * adv * m).sum() / m.sum()


def _setup():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=(HIDDEN,)).to(DT)
    with torch.no_grad():
        for p in policy.parameters():  # non-zero biases and std, so no term vanishes
            p.add_(0.1 * torch.randn_like(p))
    goals = goals_for(TASKS, generator=torch.Generator().manual_seed(1), dtype=DT)
    env = Navigation2D(TRAJS, horizon=HORIZON)

    def sample(seed: int):
        gen = torch.Generator().manual_seed(seed)
        trajs = rollout(policy, policy.params(), env, goals, generator=gen)
        return trajs, estimate_advantages(trajs)

    return policy, sample(2), sample(3)


def test_meta_gradient_equals_a_hand_unrolled_step() -> None:
    policy, (train, train_adv), (valid, valid_adv) = _setup()
    theta = policy.params()

    fast = inner_step(policy, theta, train, train_adv, lr=ALPHA)
    meta_loss = sum(
        vpg_loss(policy, fast[i], valid.select(slice(i, i + 1)), valid_adv[i : i + 1]).sum()
        for i in range(TASKS)
    )
    got = torch.autograd.grad(meta_loss, list(theta.values()))

    ref_theta = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    ref_loss = torch.zeros((), dtype=DT)
    for i in range(TASKS):
        inner = _surrogate(ref_theta, train.obs[i], train.actions[i], train_adv[i], train.mask[i])
        grads = torch.autograd.grad(inner, list(ref_theta.values()), create_graph=True)
        adapted = {k: w - ALPHA * g for (k, w), g in zip(ref_theta.items(), grads, strict=True)}
        ref_loss = ref_loss + _surrogate(
            adapted, valid.obs[i], valid.actions[i], valid_adv[i], valid.mask[i]
        )
    expected = torch.autograd.grad(ref_loss, list(ref_theta.values()))

    torch.testing.assert_close(meta_loss.detach(), ref_loss.detach(), rtol=1e-10, atol=1e-12)
    for name, g, e in zip(theta, got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_first_order_drops_the_second_order_terms() -> None:
    policy, (train, train_adv), (valid, valid_adv) = _setup()
    theta = policy.params()

    def meta_grad(first_order: bool) -> list[Tensor]:
        fast = inner_step(policy, theta, train, train_adv, lr=ALPHA, first_order=first_order)
        loss = sum(
            vpg_loss(policy, fast[i], valid.select(slice(i, i + 1)), valid_adv[i : i + 1]).sum()
            for i in range(TASKS)
        )
        return list(torch.autograd.grad(loss, list(theta.values())))

    # First order: the meta-gradient is Σ_i ∇L_valid,i evaluated at θ'_i.
    fast = inner_step(policy, theta, train, train_adv, lr=ALPHA, first_order=True)
    at_fast = [torch.zeros_like(w) for w in theta.values()]
    for i in range(TASKS):
        leaves = {k: w.detach().requires_grad_() for k, w in fast[i].items()}
        loss = vpg_loss(policy, leaves, valid.select(slice(i, i + 1)), valid_adv[i : i + 1])
        for acc, g in zip(
            at_fast, torch.autograd.grad(loss.sum(), list(leaves.values())), strict=True
        ):
            acc += g
    for g, e in zip(meta_grad(True), at_fast, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    second = meta_grad(False)
    assert any(not torch.allclose(a, b) for a, b in zip(second, at_fast, strict=True))
    # Nothing was written into the meta-parameters.
    assert all(p.grad is None for p in policy.parameters())
