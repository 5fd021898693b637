"""The batched 2D navigation environment against a per-trajectory Python loop (issue 14)."""

from __future__ import annotations

import math

import pytest
import torch

from mnemeta.errors import ConfigError
from mnemeta.rl import Navigation2D, sample_goals

DT = torch.float64


def _reference_episode(
    goal: tuple[float, float], actions: list[tuple[float, float]], *, squared: bool = False
) -> tuple[list[tuple[float, float]], list[float], list[bool]]:
    """One trajectory in plain Python floats: point_env_randgoal's step (state += clipped
    action; reward -distance at the new state; done inside the 0.01 box), cut at done (the
    steps after it are reported as staying put, reward 0, done)."""
    x, y = 0.0, 0.0
    done = False
    obs, rewards, dones = [], [], []
    for t, (ax, ay) in enumerate(actions):
        if done:
            obs.append((x, y))
            rewards.append(0.0)
            dones.append(True)
            continue
        x += min(max(ax, -0.1), 0.1)
        y += min(max(ay, -0.1), 0.1)
        dx, dy = x - goal[0], y - goal[1]
        d2 = dx * dx + dy * dy
        rewards.append(-d2 if squared else -math.sqrt(d2))
        done = (abs(dx) < 0.01 and abs(dy) < 0.01) or t + 1 >= len(actions)
        obs.append((x, y))
        dones.append(done)
    return obs, rewards, dones


@pytest.mark.parametrize("squared", [False, True])
def test_batched_env_equals_a_per_task_loop(squared: bool) -> None:
    tasks, envs, horizon = 3, 4, 12
    g = torch.Generator().manual_seed(0)
    goals = sample_goals(tasks, generator=g, dtype=DT)
    # Actions up to ±0.3, so that about half of them are clipped.
    actions = 0.3 * (2 * torch.rand(tasks, envs, horizon, 2, generator=g, dtype=DT) - 1)
    # Trajectory (0, 0) goes straight to its goal in 5 steps (within the box), then keeps
    # pushing: it must stop there and earn nothing more.
    actions[0, 0] = goals[0] / 5
    env = Navigation2D(envs, horizon=horizon, reward="squared_distance" if squared else "distance")
    first = env.reset(goals)
    assert first.shape == (tasks, envs, 2) and not first.any()
    steps = [env.step(actions[:, :, t]) for t in range(horizon)]
    for i in range(tasks):
        goal = (goals[i, 0].item(), goals[i, 1].item())
        for j in range(envs):
            ref_obs, ref_rewards, ref_dones = _reference_episode(
                goal, [tuple(a) for a in actions[i, j].tolist()], squared=squared
            )
            for t, (obs, reward, done) in enumerate(steps):
                assert tuple(obs[i, j].tolist()) == ref_obs[t], (i, j, t)
                # Within one ulp, not equal: torch's CPU float64 sqrt is not always correctly
                # rounded (torch 2.13: sqrt(0.7037935793634407) is one ulp above math.sqrt's).
                r = reward[i, j].item()
                assert abs(r - ref_rewards[t]) <= math.ulp(ref_rewards[t]), (i, j, t)
                assert done[i, j].item() == ref_dones[t], (i, j, t)
    # The trajectory sent to its goal ended after 5 steps; the others ran to the horizon.
    assert steps[4][2][0, 0] and not steps[3][2][0, 0]
    assert steps[-1][2].all()


def test_actions_are_clipped_per_coordinate() -> None:
    env = Navigation2D(2, horizon=3)
    env.reset(torch.tensor([[0.4, -0.4]]))
    obs, _, _ = env.step(torch.tensor([[[5.0, -0.05], [-0.2, 0.1]]]))
    torch.testing.assert_close(obs, torch.tensor([[[0.1, -0.05], [-0.1, 0.1]]]), rtol=0, atol=0)


def test_action_scale_is_rllab_normalize() -> None:
    # rllab's normalize maps a in [-1, 1] to 0.1 a, then clips to [-0.1, 0.1].
    env = Navigation2D(1, action_scale=0.1)
    env.reset(torch.zeros(1, 2, dtype=DT))
    obs, _, _ = env.step(torch.tensor([[[0.5, -3.0]]], dtype=DT))
    torch.testing.assert_close(obs, torch.tensor([[[0.05, -0.1]]], dtype=DT), rtol=0, atol=0)


def test_sample_goals_is_seeded_and_in_the_square() -> None:
    a = sample_goals(500, generator=torch.Generator().manual_seed(3))
    b = sample_goals(500, generator=torch.Generator().manual_seed(3))
    c = sample_goals(500, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (500, 2) and a.min() >= -0.5 and a.max() <= 0.5
    assert a.min() < -0.45 and a.max() > 0.45  # it covers the square, not a corner of it


def test_misuse_raises_with_the_fix() -> None:
    env = Navigation2D(2, horizon=1)
    with pytest.raises(ConfigError, match="reset"):
        env.step(torch.zeros(1, 2, 2))
    with pytest.raises(ConfigError, match=r"\(tasks, 2\)"):
        env.reset(torch.zeros(3))
    env.reset(torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="actions must be"):
        env.step(torch.zeros(2, 2))
    env.step(torch.zeros(1, 2, 2))
    with pytest.raises(ConfigError, match="horizon"):
        env.step(torch.zeros(1, 2, 2))
    with pytest.raises(ConfigError, match="squared_distance"):
        Navigation2D(2, reward="l1")
