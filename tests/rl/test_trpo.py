"""TRPO's step: conjugate gradient, the natural-gradient step in closed form, the KL constraint."""

from __future__ import annotations

import math

import pytest
import torch

from mnemeta.rl.trpo import conjugate_gradient, trpo_step


def test_conjugate_gradient_solves_a_symmetric_positive_definite_system() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-9)


def test_the_step_of_a_gaussian_mean_is_the_natural_gradient_to_the_trust_region() -> None:
    """Policy N(mu, s^2 I), loss -w.mu: F = I/s^2, so the step is sqrt(2 delta) s w/|w| and its
    KL, |dmu|^2 / (2 s^2), is delta (a hair under it: damping)."""
    s, delta = 0.5, 0.01
    w = torch.tensor([3.0, -4.0], dtype=torch.float64)
    mu0 = torch.tensor([0.2, 0.1], dtype=torch.float64)

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return -(w * p["mu"]).sum()

    def kl(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return (p["mu"] - mu0).square().sum() / (2 * s**2)

    new, info = trpo_step({"mu": mu0}, loss, kl, max_kl=delta)
    expected = mu0 + math.sqrt(2 * delta) * s * w / w.norm()
    assert torch.allclose(new["mu"], expected, atol=1e-6)
    assert info.step_fraction == 1.0 and info.backtracks == 0
    assert info.kl <= delta and info.kl == pytest.approx(delta, rel=1e-4)
    assert info.loss_after < info.loss_before


def test_the_line_search_keeps_the_kl_constraint_where_the_quadratic_model_is_wrong() -> None:
    """Shrinking a Gaussian's log-std: KL(N(0, s0^2) || N(0, s^2)) is far from quadratic for a
    large trust region, so the full step overshoots it and the line search backs off."""
    log_s0 = torch.tensor([0.0], dtype=torch.float64)

    def kl(p: dict[str, torch.Tensor]) -> torch.Tensor:
        ls = p["log_std"]
        return (ls - log_s0 + torch.exp(2 * (log_s0 - ls)) / 2 - 0.5).sum()

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return p["log_std"].sum()  # wants a smaller std

    for max_kl in (0.01, 0.5, 2.0):
        new, info = trpo_step({"log_std": log_s0}, loss, kl, max_kl=max_kl)
        assert info.kl <= max_kl and float(kl(new)) == pytest.approx(info.kl)
        assert info.loss_after < info.loss_before
    assert info.backtracks > 0  # at 2.0 the quadratic model overshoots


def test_no_improving_step_leaves_the_parameters() -> None:
    """A flat loss has no direction (and a loss that only grows has no improving step): the
    parameters stay as they were."""
    p0 = {"x": torch.tensor([1.0], dtype=torch.float64)}

    def kl(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return (p["x"] - 1).square().sum()

    flat, info = trpo_step(p0, lambda p: 0 * p["x"].sum(), kl)
    assert torch.equal(flat["x"], p0["x"]) and info.step_fraction == 0.0
    # Its gradient says "down", but the loss is higher everywhere but at x = 1.
    kink, info = trpo_step(p0, lambda p: -(p["x"] - 1).sum() + 1e3 * (p["x"] - 1).abs().sum(), kl)
    assert torch.equal(kink["x"], p0["x"]) and info.backtracks == 15
