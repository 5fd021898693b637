"""The linear feature baseline and the VPG surrogate against hand-computed references."""

from __future__ import annotations

import math

import numpy as np
import torch

from mnemeta.rl import (
    GaussianMLPPolicy,
    Navigation2D,
    baseline,
    estimate_advantages,
    normalize_per_task,
    rollout,
    sample_goals,
    surrogate,
    vpg_loss,
)
from mnemeta.rl.rollout import Trajectories

DT = torch.float64
T, N, H = 3, 4, 9  # tasks, trajectories per task, horizon: distinct


def _mask(seed: int) -> torch.Tensor:
    """Some trajectories end early (lengths 1..H)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, H + 1, (T, N), generator=g)
    return (torch.arange(H) < lengths.unsqueeze(-1)).to(DT)


def _rllab_features(obs: np.ndarray) -> np.ndarray:
    """rllab's LinearFeatureBaseline._features for one path of len(obs) steps."""
    o = np.clip(obs, -10, 10)
    al = np.arange(len(obs)).reshape(-1, 1) / 100.0
    return np.concatenate([o, o**2, al, al**2, al**3, np.ones((len(obs), 1))], axis=1)


def test_baseline_recovers_an_exactly_linear_return() -> None:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(T, N, H, 2, generator=g, dtype=DT)
    mask = _mask(1)
    true = torch.randn(T, 8, generator=g, dtype=DT)
    returns = baseline.features(obs, mask) @ true.unsqueeze(1).unsqueeze(-1)
    returns = returns.squeeze(-1)
    torch.testing.assert_close(baseline.fit(obs, returns, mask, reg_coeff=0.0), true)
    # With rllab's ridge (1e-5) the fit is within 1e-3 of the returns.
    fitted = baseline.fit_predict(obs, returns, mask)
    assert (fitted - returns).abs().max() < 1e-3


def test_baseline_equals_rllab_per_task_on_cut_paths() -> None:
    """The batched, masked fit equals rllab's formula on each task's paths cut at their end."""
    g = torch.Generator().manual_seed(2)
    obs = 3 * torch.randn(T, N, H, 2, generator=g, dtype=DT)
    obs[0, 0, 0] = torch.tensor([12.0, -15.0])  # beyond rllab's clip at ±10
    mask = _mask(3)
    returns = torch.randn(T, N, H, generator=g, dtype=DT) * mask
    values = baseline.fit_predict(obs, returns, mask)
    for i in range(T):
        lengths = mask[i].sum(-1).long().tolist()
        paths = [(obs[i, j, :n].numpy(), returns[i, j, :n].numpy()) for j, n in enumerate(lengths)]
        featmat = np.concatenate([_rllab_features(o) for o, _ in paths])
        target = np.concatenate([r for _, r in paths])
        coeffs = np.linalg.lstsq(
            featmat.T @ featmat + 1e-5 * np.identity(featmat.shape[1]),
            featmat.T @ target,
            rcond=None,
        )[0]
        for j, (o, _) in enumerate(paths):
            expected = torch.from_numpy(_rllab_features(o) @ coeffs)
            torch.testing.assert_close(values[i, j, : len(o)], expected, rtol=1e-9, atol=1e-9)
            assert not values[i, j, len(o) :].any()


def test_advantages_are_normalised_per_task_as_rllab() -> None:
    g = torch.Generator().manual_seed(4)
    mask = _mask(5)
    adv = torch.randn(T, N, H, generator=g, dtype=DT) * 3 + 1
    out = normalize_per_task(adv, mask)
    for i in range(T):
        valid = adv[i][mask[i].bool()].numpy()
        expected = (valid - valid.mean()) / (valid.std() + 1e-8)  # center_advantages, ddof 0
        torch.testing.assert_close(out[i][mask[i].bool()], torch.from_numpy(expected))
    assert not out[mask == 0].any()


def test_estimated_advantages_are_returns_minus_the_fitted_baseline() -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2).to(DT)
    goals = sample_goals(T, generator=torch.Generator().manual_seed(6), dtype=DT)
    trajs = rollout(
        policy,
        policy.params(),
        Navigation2D(N, horizon=H),
        goals,
        generator=torch.Generator().manual_seed(7),
    )
    raw = estimate_advantages(trajs, normalize=False)
    expected = trajs.returns - baseline.fit_predict(trajs.obs, trajs.returns, trajs.mask)
    torch.testing.assert_close(raw, expected * trajs.mask)
    torch.testing.assert_close(estimate_advantages(trajs), normalize_per_task(raw, trajs.mask))


def test_vpg_gradient_of_a_linear_gaussian_policy_in_closed_form() -> None:
    """π(a | s) = N(a; w s + b, σ²), σ = e^ρ, 1-D. Then ∂ log π / ∂w = (a - μ) s / σ²,
    ∂/∂b = (a - μ) / σ², ∂/∂ρ = (a - μ)² / σ² - 1, and the surrogate's gradient is
    -(1 / Σm) Σ m A ∂ log π."""
    policy = GaussianMLPPolicy(1, 1, hidden=()).to(DT)
    w, b, rho = 0.7, -0.2, -0.4
    params = {
        "mean.layers.0.weight": torch.tensor([[w]], dtype=DT, requires_grad=True),
        "mean.layers.0.bias": torch.tensor([b], dtype=DT, requires_grad=True),
        "log_std": torch.tensor([rho], dtype=DT, requires_grad=True),
    }
    g = torch.Generator().manual_seed(8)
    s = torch.randn(T, N, H, 1, generator=g, dtype=DT)
    a = torch.randn(T, N, H, 1, generator=g, dtype=DT)
    adv = torch.randn(T, N, H, generator=g, dtype=DT)
    mask = _mask(9)
    zeros = torch.zeros(T, N, H, dtype=DT)
    trajs = Trajectories(s, a, zeros, mask, zeros, 0.99)
    losses = vpg_loss(policy, params, trajs, adv)
    grads = torch.autograd.grad(losses.sum(), list(params.values()))

    var = math.exp(2 * rho)
    expected = {"w": 0.0, "b": 0.0, "rho": 0.0}
    for i in range(T):
        steps = mask[i].sum().item()
        for j in range(N):
            for t in range(H):
                if not mask[i, j, t]:
                    continue
                si, ai, ci = s[i, j, t, 0].item(), a[i, j, t, 0].item(), adv[i, j, t].item()
                r = ai - (w * si + b)
                expected["w"] -= ci * r * si / var / steps
                expected["b"] -= ci * r / var / steps
                expected["rho"] -= ci * (r * r / var - 1) / steps
    got = {"w": grads[0].item(), "b": grads[1].item(), "rho": grads[2].item()}
    for k in expected:
        assert math.isclose(got[k], expected[k], rel_tol=1e-10), (k, got[k], expected[k])
    # And the loss itself: -Σ m log π A / Σ m per task.
    log_pi = -0.5 * (a[..., 0] - (w * s[..., 0] + b)) ** 2 / var - rho - 0.5 * math.log(2 * math.pi)
    expected_loss = -(log_pi * adv * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))
    torch.testing.assert_close(losses.detach(), expected_loss)
    torch.testing.assert_close(surrogate(log_pi, adv, mask), expected_loss)
