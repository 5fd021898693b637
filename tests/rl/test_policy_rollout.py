"""The Gaussian MLP policy and batched rollouts: likelihood, functional calls, shapes, seeds."""

from __future__ import annotations

import math

import torch
from torch.func import functional_call

from mnemeta.rl import GaussianMLPPolicy, Navigation2D, returns_to_go, rollout, sample_goals

DT = torch.float64


def _policy(seed: int = 0, **kwargs: object) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    return GaussianMLPPolicy(2, 2, **kwargs).to(DT)


def test_policy_is_the_papers_2x100_relu_mlp_with_a_state_independent_std() -> None:
    policy = _policy()
    shapes = {k: tuple(v.shape) for k, v in policy.params().items()}
    assert shapes == {
        "mean.layers.0.weight": (100, 2),
        "mean.layers.0.bias": (100,),
        "mean.layers.2.weight": (100, 100),
        "mean.layers.2.bias": (100,),
        "mean.layers.4.weight": (2, 100),
        "mean.layers.4.bias": (2,),
        "log_std": (2,),
    }
    assert torch.equal(policy.log_std, torch.zeros(2, dtype=DT))  # init_std = 1
    assert all(not b.any() for k, b in policy.params().items() if k.endswith("bias"))


def test_log_prob_is_the_diagonal_normal_density() -> None:
    policy = _policy()
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.3, 0.4]))
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(3, 4, 5, 2, generator=g, dtype=DT)
    actions = torch.randn(3, 4, 5, 2, generator=g, dtype=DT)
    mean, log_std = policy(obs)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(policy.log_prob(policy.params(), obs, actions), expected)


def test_methods_run_at_the_params_they_are_given() -> None:
    policy = _policy()
    obs = torch.randn(6, 2, dtype=DT)
    other = {k: v + 0.1 for k, v in policy.params().items()}
    mean, log_std = policy.distribution(other, obs)
    ref_mean, ref_log_std = functional_call(policy, other, (obs,))
    assert torch.equal(mean, ref_mean) and torch.equal(log_std, ref_log_std)
    assert not torch.allclose(mean, policy(obs)[0])
    # The gradient reaches the dict's tensors, not the module's parameters.
    leaves = {k: v.detach().requires_grad_() for k, v in other.items()}
    policy.log_prob(leaves, obs, torch.zeros(6, 2, dtype=DT)).sum().backward()
    assert all(v.grad is not None for v in leaves.values())
    assert all(p.grad is None for p in policy.parameters())


def test_min_std_floors_the_std() -> None:
    policy = _policy(min_std=0.5)
    with torch.no_grad():
        policy.log_std.fill_(-3.0)
    assert torch.equal(
        policy(torch.zeros(1, 2, dtype=DT))[1], torch.full((2,), math.log(0.5), dtype=DT)
    )


def test_rollout_shapes_and_same_seed_same_trajectories() -> None:
    policy = _policy()
    env = Navigation2D(5, horizon=7)
    goals = sample_goals(3, generator=torch.Generator().manual_seed(0), dtype=DT)

    def run(seed: int):
        return rollout(
            policy, policy.params(), env, goals, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = run(1), run(1), run(2)
    assert a.obs.shape == a.actions.shape == (3, 5, 7, 2)
    assert a.rewards.shape == a.mask.shape == a.returns.shape == (3, 5, 7)
    assert (a.tasks, a.horizon) == (3, 7)
    for field in ("obs", "actions", "rewards", "mask", "returns"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.actions, c.actions)
    assert not a.obs[:, :, 0].any()  # every trajectory starts at the origin
    # obs[t + 1] is where action t took the agent (all of these are far from their goals).
    torch.testing.assert_close(
        a.obs[:, :, 1:], a.obs[:, :, :-1] + a.actions[:, :, :-1].clamp(-0.1, 0.1)
    )
    assert not a.actions.requires_grad


def test_a_trajectory_that_reaches_its_goal_is_masked_from_then_on() -> None:
    # A policy that (almost surely) steps straight onto the goal: zero weights, bias = goal,
    # σ = 1e-6.
    policy = _policy(init_std=1e-6)
    goal = torch.tensor([[0.05, -0.08]], dtype=DT)
    params = {k: torch.zeros_like(v) for k, v in policy.params().items()}
    params["mean.layers.4.bias"] = goal[0].clone()
    params["log_std"] = torch.full((2,), math.log(1e-6), dtype=DT)
    trajs = rollout(policy, params, Navigation2D(2, horizon=6), goal, generator=torch.Generator())
    assert torch.equal(trajs.mask, torch.tensor([[[1.0, 0, 0, 0, 0, 0]] * 2], dtype=DT))
    assert (trajs.rewards[..., 1:] == 0).all() and (trajs.rewards[..., 0] > -1e-5).all()
    torch.testing.assert_close(trajs.returns, trajs.rewards)


def test_returns_to_go_against_a_hand_loop() -> None:
    g = torch.Generator().manual_seed(5)
    rewards = torch.randn(2, 3, 6, generator=g, dtype=DT)
    mask = torch.ones(2, 3, 6, dtype=DT)
    mask[0, 1, 4:] = 0
    mask[1, 2, 1:] = 0
    rewards = rewards * mask
    gamma = 0.9
    expected = torch.zeros_like(rewards)
    for i in range(2):
        for j in range(3):
            for t in range(6):
                expected[i, j, t] = sum(
                    gamma ** (k - t) * rewards[i, j, k].item() * mask[i, j, k].item()
                    for k in range(t, 6)
                )
    torch.testing.assert_close(returns_to_go(rewards, mask, gamma), expected)


def test_rollout_with_one_set_of_weights_per_task_steps_them_together() -> None:
    policy, env = _policy(hidden=(8,)), Navigation2D(3, horizon=6)
    theta = {k: w.detach() for k, w in policy.params().items()}
    goals = sample_goals(2, generator=torch.Generator().manual_seed(1), dtype=DT)
    shared = rollout(policy, theta, env, goals, generator=torch.Generator().manual_seed(2))
    # The same weights given once per task: the same draws, the same trajectories (to
    # rounding: a one-task matmul may round differently from the batched one).
    listed = rollout(policy, [theta, theta], env, goals, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(listed.actions, shared.actions, rtol=0, atol=1e-12)
    torch.testing.assert_close(listed.rewards, shared.rewards, rtol=0, atol=1e-12)
    # Another task's weights change that task's actions only.
    moved = {k: (w + 0.5 if k == "mean.layers.2.bias" else w) for k, w in theta.items()}
    mixed = rollout(policy, [theta, moved], env, goals, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(mixed.actions[0], shared.actions[0], rtol=0, atol=1e-12)
    assert not torch.allclose(mixed.actions[1], shared.actions[1])
