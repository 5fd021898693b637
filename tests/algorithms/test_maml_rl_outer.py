"""MAML-RL's outer step: the TRPO meta-step on the real meta-objective (tiny policy, 2 tasks)."""

from __future__ import annotations

import math

import torch

from mnemeta.algorithms.maml_rl import (
    adapt_and_evaluate,
    gaussian_kl,
    inner_step,
    iteration_generator,
    meta_objective,
    meta_step,
)
from mnemeta.rl import (
    GaussianMLPPolicy,
    Navigation2D,
    estimate_advantages,
    rollout,
    sample_goals,
)

TASKS, TRAJS, HORIZON = 2, 4, 8


def _policy() -> GaussianMLPPolicy:
    torch.manual_seed(0)
    return GaussianMLPPolicy(2, 2, hidden=(8,)).double()


def _theta(policy: GaussianMLPPolicy) -> dict[str, torch.Tensor]:
    return {k: w.detach().clone() for k, w in policy.params().items()}


def _samples(policy: GaussianMLPPolicy, theta, env):
    gen = iteration_generator(0, 0)
    goals = sample_goals(TASKS, generator=gen, dtype=torch.float64)
    pre = rollout(policy, theta, env, goals, generator=gen)
    pre_adv = estimate_advantages(pre)
    fast = inner_step(policy, theta, pre, pre_adv, lr=0.5, first_order=True)
    # Every task at its own θ'_i, stepping together (one draw of noise per step for the batch).
    post = rollout(
        policy, [{k: w.detach() for k, w in f.items()} for f in fast], env, goals, generator=gen
    )
    return pre, pre_adv, post, estimate_advantages(post)


def test_gaussian_kl_matches_torch() -> None:
    g = torch.Generator().manual_seed(3)
    m0, m1 = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    s0, s1 = torch.randn(2, generator=g), torch.randn(2, generator=g)
    p = torch.distributions.Normal(m0, s0.exp())
    q = torch.distributions.Normal(m1, s1.exp())
    expected = torch.distributions.kl_divergence(p, q).sum(-1)
    torch.testing.assert_close(gaussian_kl(m0, s0, m1, s1), expected)


def test_meta_step_satisfies_its_kl_constraint_on_the_meta_objective() -> None:
    policy, env = _policy(), Navigation2D(TRAJS, horizon=HORIZON)
    theta = _theta(policy)
    max_kl = 0.01
    new, metrics = meta_step(
        policy, theta, env, seed=0, iteration=0, meta_batch=TASKS, lr=0.5, max_kl=max_kl
    )
    # Rebuild the same objective from the same draws: the accepted θ lies in the trust region.
    pre, pre_adv, post, post_adv = _samples(policy, theta, env)
    loss_fn, kl_fn = meta_objective(policy, theta, pre, pre_adv, post, post_adv, lr=0.5)
    with torch.no_grad():
        assert float(kl_fn(theta)) < 1e-12  # π_old is θ'_i(θ_old)
        assert abs(float(loss_fn(theta)) - metrics.loss_before) < 1e-9
        kl = float(kl_fn(new))
        assert float(loss_fn(new)) < metrics.loss_before
    assert metrics.step_fraction > 0
    assert 0 < kl <= max_kl
    assert math.isclose(kl, metrics.kl, rel_tol=1e-9)
    assert math.isfinite(metrics.pre_return) and math.isfinite(metrics.post_return)


def test_first_order_meta_gradient_is_the_gradient_at_the_fast_weights() -> None:
    policy, env = _policy(), Navigation2D(TRAJS, horizon=HORIZON)
    theta = _theta(policy)
    pre, pre_adv, post, post_adv = _samples(policy, theta, env)
    names = list(theta)

    def grad(first_order: bool) -> torch.Tensor:
        loss_fn, _ = meta_objective(
            policy, theta, pre, pre_adv, post, post_adv, lr=0.5, first_order=first_order
        )
        leaves = {k: w.clone().requires_grad_() for k, w in theta.items()}
        gs = torch.autograd.grad(loss_fn(leaves), [leaves[k] for k in names])
        return torch.cat([g.reshape(-1) for g in gs])

    # Reference: mean over tasks of ∇_{θ'} of the task's ratio surrogate, at θ' = θ'_i(θ_old)
    # (where the ratio is 1, so it is the VPG gradient at the fast weights).
    fast = inner_step(policy, theta, pre, pre_adv, lr=0.5, first_order=True)
    expected = torch.zeros_like(grad(True))
    for i, f in enumerate(fast):
        leaves = {k: w.detach().requires_grad_() for k, w in f.items()}
        task = slice(i, i + 1)
        logp = policy.log_prob(leaves, post.obs[task], post.actions[task])
        loss = -(logp * post_adv[task] * post.mask[task]).sum() / post.mask[task].sum() / TASKS
        gs = torch.autograd.grad(loss, [leaves[k] for k in names])
        expected += torch.cat([g.reshape(-1) for g in gs])
    first = grad(True)
    torch.testing.assert_close(first, expected, rtol=1e-9, atol=1e-12)
    second = grad(False)
    assert not torch.allclose(second, first)
    cos = float(first @ second / (first.norm() * second.norm()))
    assert cos > 0  # the second-order terms correct the direction, they do not reverse it


def test_meta_step_is_deterministic_under_a_seed() -> None:
    policy, env = _policy(), Navigation2D(TRAJS, horizon=HORIZON)
    theta = _theta(policy)
    a, ma = meta_step(policy, theta, env, seed=4, iteration=2, meta_batch=TASKS, lr=0.5)
    b, mb = meta_step(policy, theta, env, seed=4, iteration=2, meta_batch=TASKS, lr=0.5)
    c, _ = meta_step(policy, theta, env, seed=4, iteration=3, meta_batch=TASKS, lr=0.5)
    assert ma == mb
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_joint_step_without_adaptation() -> None:
    policy, env = _policy(), Navigation2D(TRAJS, horizon=HORIZON)
    theta = _theta(policy)
    new, m = meta_step(policy, theta, env, seed=0, iteration=0, meta_batch=TASKS, adapt=False)
    assert math.isnan(m.post_return)
    assert 0 <= m.kl <= 0.01
    assert set(new) == set(theta)


def test_ppo_outer_step_follows_the_meta_gradient_and_clips() -> None:
    from mnemeta.algorithms.maml_rl import ppo_meta_step

    policy, env = _policy(), Navigation2D(TRAJS, horizon=HORIZON)
    theta = _theta(policy)
    pre, pre_adv, post, post_adv = _samples(policy, theta, env)
    loss_fn, _ = meta_objective(policy, theta, pre, pre_adv, post, post_adv, lr=0.5)
    leaves = {k: w.clone().requires_grad_() for k, w in theta.items()}
    meta_grad = torch.autograd.grad(loss_fn(leaves), list(leaves.values()))
    # One plain SGD epoch of the PPO step: at θ_old every ratio is 1, the clip is inactive, so
    # the step is -lr x the (second-order) meta-gradient of the TRPO objective, on the same data.
    sgd = torch.optim.SGD(policy.parameters(), lr=1e-3)
    m = ppo_meta_step(
        policy, sgd, env, seed=0, iteration=0, meta_batch=TASKS, lr=0.5, clip=0.2, epochs=1
    )
    for (name, w), g in zip(policy.named_parameters(), meta_grad, strict=True):
        torch.testing.assert_close(w.detach(), theta[name] - 1e-3 * g, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert abs(m.loss_before - float(loss_fn(theta))) < 1e-12
    # Many large steps push ratios past the clip, which then caps the gain of those steps.
    policy2 = _policy()
    adam = torch.optim.Adam(policy2.parameters(), lr=0.05)
    m2 = ppo_meta_step(
        policy2, adam, env, seed=0, iteration=0, meta_batch=TASKS, lr=0.5, clip=0.1, epochs=8
    )
    assert m2.loss_after < m2.loss_before
    assert 0 < m2.step_fraction <= 1  # some post-update steps left [0.9, 1.1]
    assert m2.kl > 0


def test_adapt_and_evaluate_takes_steps_from_the_weights_each_step_reached() -> None:
    policy, env = _policy(), Navigation2D(TRAJS, horizon=HORIZON)
    theta = _theta(policy)
    goals = sample_goals(TASKS, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = adapt_and_evaluate(
        policy, theta, env, goals, generator=torch.Generator().manual_seed(6), lr=0.5, steps=2
    )
    assert list(out) == ["before", "after_1", "after_2"]  # no success columns for navigation
    # By hand: the same generator, stage after stage.
    gen = torch.Generator().manual_seed(6)
    pre = rollout(policy, theta, env, goals, generator=gen)
    fast = inner_step(policy, theta, pre, estimate_advantages(pre), lr=0.5, first_order=True)
    post = rollout(policy, fast, env, goals, generator=gen)
    second = [
        inner_step(
            policy,
            f,
            post.select(slice(i, i + 1)),
            estimate_advantages(post)[i : i + 1],
            lr=0.5,
            first_order=True,
        )[0]
        for i, f in enumerate(fast)
    ]
    last = rollout(policy, second, env, goals, generator=gen)
    for name, trajs in (("before", pre), ("after_1", post), ("after_2", last)):
        torch.testing.assert_close(out[name], trajs.undiscounted_return().mean(dim=1))
