"""HalfCheetah-Vel / -Dir over gymnasium (needs the rl extra; skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium", reason="the rl extra is not installed: pip install 'mnemeta[rl]'")
pytest.importorskip("mujoco", reason="the rl extra is not installed: pip install 'mnemeta[rl]'")

from mnemeta.errors import ConfigError
from mnemeta.rl import GaussianMLPPolicy, rollout
from mnemeta.rl.environment import TaskEnvironment
from mnemeta.rl.locomotion import CTRL_COST, HalfCheetahDir, HalfCheetahVel


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def vel() -> HalfCheetahVel:
    return HalfCheetahVel(3, horizon=20)


@pytest.fixture(scope="module")
def direction() -> HalfCheetahDir:
    return HalfCheetahDir(3, horizon=20)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes_follow_the_tasks(vel: HalfCheetahVel, dtype: torch.dtype) -> None:
    assert isinstance(vel, TaskEnvironment)
    assert (vel.observation_size, vel.action_size, vel.horizon) == (17, 6, 20)
    tasks = vel.sample_tasks(2, generator=_gen(0), dtype=dtype)
    assert tasks.shape == (2, 1) and tasks.dtype == dtype
    obs = vel.reset(tasks, generator=_gen(1))
    assert obs.shape == (2, 3, 17) and obs.dtype == dtype
    obs, reward, done = vel.step(torch.zeros(2, 3, 6, dtype=dtype))
    assert obs.shape == (2, 3, 17) and obs.dtype == dtype
    assert reward.shape == (2, 3) and reward.dtype == dtype
    assert done.shape == (2, 3) and done.dtype == torch.bool and not done.any()
    assert vel.success is None  # no success criterion: None, not a 0 % rate


def test_tasks_are_the_papers_distributions(vel: HalfCheetahVel, direction: HalfCheetahDir) -> None:
    v = vel.sample_tasks(500, generator=_gen(0))
    assert v.min() >= 0.0 and v.max() <= 2.0 and 0.9 < float(v.mean()) < 1.1
    assert torch.equal(v, vel.sample_tasks(500, generator=_gen(0)))
    d = direction.sample_tasks(500, generator=_gen(0))
    assert set(d.flatten().tolist()) == {-1.0, 1.0}
    assert 0.4 < float((d > 0).float().mean()) < 0.6


def test_velocity_reward_is_the_papers_formula_from_info(vel: HalfCheetahVel) -> None:
    """``-|x_velocity - v_goal| - 0.05 Σ clip(a, -1, 1)²`` (half_cheetah_env_rand.py), with
    actions partly outside the bounds, so the clip matters."""
    tasks = torch.tensor([[0.3], [1.7]], dtype=torch.float64)
    vel.reset(tasks, generator=_gen(2))
    g = _gen(3)
    for _ in range(5):
        actions = 2 * torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
        _, reward, _ = vel.step(actions)
        v = torch.from_numpy(np.asarray(vel.info["x_velocity"])).reshape(2, 3)
        ctrl = CTRL_COST * actions.clamp(-1, 1).square().sum(-1)
        expected = -(v - tasks).abs() - ctrl
        torch.testing.assert_close(reward, expected, rtol=0, atol=1e-6)


def test_direction_reward_is_the_papers_formula_from_info(direction: HalfCheetahDir) -> None:
    tasks = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    direction.reset(tasks, generator=_gen(2))
    g = _gen(4)
    for _ in range(5):
        actions = 2 * torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
        _, reward, _ = direction.step(actions)
        v = torch.from_numpy(np.asarray(direction.info["x_velocity"])).reshape(2, 3)
        expected = tasks * v - CTRL_COST * actions.clamp(-1, 1).square().sum(-1)
        torch.testing.assert_close(reward, expected, rtol=0, atol=1e-6)


def test_same_generator_gives_identical_trajectories(vel: HalfCheetahVel) -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, hidden=(16,))
    tasks = vel.sample_tasks(2, generator=_gen(5))
    a = rollout(policy, policy.params(), vel, tasks, generator=_gen(6))
    b = rollout(policy, policy.params(), vel, tasks, generator=_gen(6))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards)
    c = rollout(policy, policy.params(), vel, tasks, generator=_gen(7))
    assert not torch.equal(a.obs[:, :, 0], c.obs[:, :, 0])  # another seed, other initial states
    # Each sub-environment gets its own seed: the trajectories of a task differ.
    assert not torch.equal(a.obs[0, 0], a.obs[0, 1])


def test_different_tasks_give_different_rewards(vel: HalfCheetahVel) -> None:
    """Same seeds and actions, so the same motion: only the target velocity changes, and the
    reward with it by exactly ``|v - 0.5| - |v - 1.5|``."""
    actions = torch.randn(2, 3, 6, generator=_gen(8))
    slow, fast = torch.tensor([[0.5], [0.5]]), torch.tensor([[1.5], [1.5]])
    vel.reset(slow, generator=_gen(9))
    _, r_slow, _ = vel.step(actions)
    v = torch.from_numpy(np.asarray(vel.info["x_velocity"])).reshape(2, 3).float()
    vel.reset(fast, generator=_gen(9))
    _, r_fast, _ = vel.step(actions)
    assert not torch.allclose(r_slow, r_fast)
    torch.testing.assert_close(r_slow - r_fast, (v - 1.5).abs() - (v - 0.5).abs())


def test_done_at_the_horizon_then_step_refuses() -> None:
    env = HalfCheetahVel(2, horizon=3)
    tasks = env.sample_tasks(1, generator=_gen(0))
    env.reset(tasks, generator=_gen(0))
    dones = [env.step(torch.zeros(1, 2, 6))[2] for _ in range(3)]
    assert [bool(d.all()) for d in dones] == [False, False, True]
    assert not dones[0].any() and not dones[1].any()
    with pytest.raises(ConfigError, match="after the horizon"):
        env.step(torch.zeros(1, 2, 6))
    policy = GaussianMLPPolicy(17, 6, hidden=(8,))
    trajs = rollout(policy, policy.params(), env, tasks, generator=_gen(1))
    assert trajs.mask.shape == (1, 2, 3) and bool((trajs.mask == 1).all())


def test_a_done_trajectory_earns_nothing_and_stays_put(vel: HalfCheetahVel) -> None:
    """The masking convention of Navigation2D, for an environment that ends a trajectory
    early (the half-cheetah never does; forced here)."""
    vel.reset(torch.tensor([[1.0]]), generator=_gen(0))
    obs, _, _ = vel.step(torch.zeros(1, 3, 6))
    vel.done[0, 1] = True
    obs2, reward, done = vel.step(torch.ones(1, 3, 6))
    assert reward[0, 1] == 0 and reward[0, 0] != 0 and bool(done[0, 1])
    assert torch.equal(obs2[0, 1], obs[0, 1]) and not torch.equal(obs2[0, 0], obs[0, 0])


def test_sub_environments_are_kept_across_task_counts(vel: HalfCheetahVel) -> None:
    """MAML-RL alternates meta-batch rollouts with one-task rollouts: no MuJoCo model is
    rebuilt when the task count changes and changes back."""
    vel.reset(vel.sample_tasks(2, generator=_gen(0)), generator=_gen(0))
    envs, view = list(vel.pool.envs), vel.pool.vector(6)
    vel.reset(vel.sample_tasks(1, generator=_gen(1)), generator=_gen(1))
    vel.reset(vel.sample_tasks(2, generator=_gen(2)), generator=_gen(2))
    assert vel.pool.envs[:6] == envs[:6] and vel.pool.vector(6) is view


def test_bad_tasks_and_actions_are_refused(vel: HalfCheetahVel) -> None:
    with pytest.raises(ConfigError, match=r"\(tasks, 1\)"):
        vel.reset(torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="n >= 1"):
        vel.sample_tasks(0, generator=_gen(0))
    vel.reset(torch.ones(1, 1), generator=_gen(0))
    with pytest.raises(ConfigError, match="actions must be"):
        vel.step(torch.zeros(1, 3, 5))
    with pytest.raises(ConfigError, match="envs_per_task >= 1"):
        HalfCheetahVel(0)


def test_registered_builder_reads_the_rl_section() -> None:
    from mnemeta.config import RLConfig
    from mnemeta.registry import DATASETS

    for name, cls in (("halfcheetah_vel", HalfCheetahVel), ("halfcheetah_dir", HalfCheetahDir)):
        spec = DATASETS.get(name)
        assert spec.kind == "environment" and spec.environment is not None
        env = spec.environment(RLConfig(trajectories=2, horizon=7), "cpu")
        assert isinstance(env, cls) and (env.envs_per_task, env.horizon) == (2, 7)


def test_a_shard_of_the_batch_runs_the_whole_batchs_rows(vel: HalfCheetahVel) -> None:
    """Under torchrun a rank rolls out tasks [lo, hi) of the meta-batch with the whole batch's
    reset seeds and action noise: its trajectories are those rows of one process's."""
    from mnemeta.rl.shard import TaskShard

    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, hidden=(8,)).double()
    params = {k: w.detach() for k, w in policy.params().items()}
    tasks = vel.sample_tasks(3, generator=_gen(4), dtype=torch.float64)
    whole = rollout(policy, params, vel, tasks, generator=_gen(5))
    shard = TaskShard(1, 3, 3, lambda t: t)
    part = rollout(policy, params, vel, shard.part(tasks), generator=_gen(5), shard=shard)
    for name in ("obs", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(part, name), getattr(whole, name)[1:3], msg=name)
