"""Meta-World ML1 (needs the rl extra; skipped without it)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gymnasium", reason="the rl extra is not installed: pip install 'mnemeta[rl]'")
pytest.importorskip("mujoco", reason="the rl extra is not installed: pip install 'mnemeta[rl]'")
pytest.importorskip("metaworld", reason="the rl extra is not installed: pip install 'mnemeta[rl]'")

from mnemeta.errors import ConfigError
from mnemeta.rl import GaussianMLPPolicy, rollout
from mnemeta.rl.environment import TaskEnvironment
from mnemeta.rl.metaworld_ml1 import MetaWorldML1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def reach() -> MetaWorldML1:
    return MetaWorldML1(2, task="reach-v3", horizon=40)


def test_shapes_dtypes_and_success_is_a_bool_tensor(reach: MetaWorldML1) -> None:
    assert isinstance(reach, TaskEnvironment)
    assert (reach.observation_size, reach.action_size) == (39, 4)
    tasks = reach.sample_tasks(3, generator=_gen(0), dtype=torch.float64)
    assert tasks.shape == (3, 1) and tasks.dtype == torch.float64
    assert len(set(tasks.flatten().tolist())) == 3  # distinct goals when n <= 50
    obs = reach.reset(tasks, generator=_gen(0))
    assert obs.shape == (3, 2, 39) and obs.dtype == torch.float64
    assert reach.success is not None and reach.success.dtype == torch.bool
    obs, reward, done = reach.step(torch.zeros(3, 2, 4, dtype=torch.float64))
    assert obs.shape == (3, 2, 39) and reward.shape == (3, 2) and done.dtype == torch.bool
    assert reach.success.shape == (3, 2)


def test_success_is_any_steps_info_success(reach: MetaWorldML1) -> None:
    """A scripted reacher (hand towards the hidden goal, read from the simulator) succeeds;
    doing nothing does not. success stays True once hit, and a reset clears it."""
    tasks = reach.sample_tasks(2, generator=_gen(1))
    obs = reach.reset(tasks, generator=_gen(1))
    targets = torch.stack(
        [torch.as_tensor(e._target_pos, dtype=torch.float32) for e in reach.pool.envs[:4]]
    ).reshape(2, 2, 3)
    hits = []
    for _ in range(reach.horizon):
        move = (10 * (targets - obs[..., :3])).clamp(-1, 1)
        action = torch.cat([move, torch.zeros(2, 2, 1)], dim=-1)
        obs, _, _ = reach.step(action)
        hits.append(torch.from_numpy(reach.info["success"] > 0).reshape(2, 2))
    assert reach.success is not None and bool(reach.success.all())
    assert torch.equal(reach.success, torch.stack(hits).any(dim=0))
    reach.reset(tasks, generator=_gen(1))
    for _ in range(reach.horizon):
        reach.step(torch.zeros(2, 2, 4))
    assert not bool(reach.success.any())


def test_same_generator_gives_identical_trajectories(reach: MetaWorldML1) -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(39, 4, hidden=(16,))
    tasks = reach.sample_tasks(2, generator=_gen(2))
    a = rollout(policy, policy.params(), reach, tasks, generator=_gen(3))
    b = rollout(policy, policy.params(), reach, tasks, generator=_gen(3))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards)


def test_different_tasks_give_different_rewards(reach: MetaWorldML1) -> None:
    actions = torch.zeros(2, 2, 4)
    reach.reset(torch.tensor([[0.0], [0.0]]), generator=_gen(4))
    _, same, _ = reach.step(actions)
    torch.testing.assert_close(same[0], same[1])  # one goal, one reward
    reach.reset(torch.tensor([[0.0], [1.0]]), generator=_gen(4))
    _, reward, _ = reach.step(actions)
    assert not torch.allclose(reward[0], reward[1])


def test_held_out_goals_are_mls_test_tasks(reach: MetaWorldML1) -> None:
    test = reach.held_out()
    assert test.split == "test" and len(test.task_list) == len(reach.task_list) == 50
    assert test.pool is reach.pool  # no second set of MuJoCo models
    train_goals = {t.data for t in reach.task_list}
    assert not any(t.data in train_goals for t in test.task_list)


def test_done_at_the_horizon_then_step_refuses() -> None:
    env = MetaWorldML1(1, horizon=2)
    env.reset(torch.zeros(1, 1), generator=_gen(0))
    assert not env.step(torch.zeros(1, 1, 4))[2].any()
    assert env.step(torch.zeros(1, 1, 4))[2].all()
    with pytest.raises(ConfigError, match="after the horizon"):
        env.step(torch.zeros(1, 1, 4))


def test_bad_settings_are_refused(reach: MetaWorldML1) -> None:
    with pytest.raises(ConfigError, match="not a Meta-World ML1 task"):
        MetaWorldML1(1, task="reach-v2")
    with pytest.raises(ConfigError, match="max_path_length"):
        MetaWorldML1(1, horizon=501)
    with pytest.raises(ConfigError, match="whole indices"):
        reach.reset(torch.tensor([[50.0]]))
    with pytest.raises(ConfigError, match="whole indices"):
        reach.reset(torch.tensor([[0.5]]))


def test_registered_builder_reads_the_rl_section() -> None:
    from mnemeta.config import RLConfig
    from mnemeta.registry import DATASETS

    spec = DATASETS.get("metaworld_ml1")
    assert spec.environment is not None
    env = spec.environment(RLConfig(trajectories=2, horizon=9, task="reach-v3"), "cpu")
    assert isinstance(env, MetaWorldML1) and (env.envs_per_task, env.horizon) == (2, 9)
