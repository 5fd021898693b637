"""RL²: the memory spans a trial and not more, GAE and PPO's clipped loss against hand
computations, and the learner's MetaRLLearner contract (determinism, resumable state, an
evaluation that leaves the weights alone)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

from mnemeta.algorithms.meta_rl import MetaRLLearner
from mnemeta.algorithms.rl2 import RL2, RL2Config
from mnemeta.config import load_config
from mnemeta.errors import ConfigError
from mnemeta.registry import LEARNERS, BuildContext
from mnemeta.rl import Navigation2D
from mnemeta.rl.ppo import clipped_surrogate, gae, value_loss
from mnemeta.rl.recurrent_policy import RecurrentGaussianPolicy
from mnemeta.rl.trials import trial_rollout

TINY = RL2Config(algorithm="rl2", hidden=8, ppo_epochs=2, minibatches=2)


def _learner(cfg: RL2Config = TINY, seed: int = 0) -> RL2:
    torch.manual_seed(seed)
    return RL2(cfg, observation_size=2, action_size=2)


def _goals(n: int, seed: int = 3) -> Tensor:
    return Navigation2D(1).sample_tasks(n, generator=torch.Generator().manual_seed(seed))


# --- the memory of a trial -------------------------------------------------------------------


def test_hidden_state_is_kept_across_episodes_and_zero_at_a_trial_start() -> None:
    torch.manual_seed(0)
    policy = RecurrentGaussianPolicy(2, 2, hidden=8)
    env = Navigation2D(3, horizon=6, action_scale=0.1)
    gen = torch.Generator().manual_seed(1)
    trials = trial_rollout(policy, env, _goals(2), episodes=3, generator=gen, record_hidden=True)
    assert trials.hidden is not None and torch.all(trials.mask == 1)  # no goal reached
    h = trials.by_episode(trials.hidden)  # (tasks, trials, episodes, horizon, hidden)
    assert torch.all(h[:, :, 0, 0] == 0)  # a trial starts from zero ...
    for e in range(1, 3):
        # ... episode e starts from the state the last step of episode e - 1 produced: the
        # state after step H-1 is the one step H-1 started from, advanced once.
        assert torch.all(h[:, :, e, 0] != 0)
        last_in = trials.by_episode(trials.inputs)[:, :, e - 1, -1]
        _, _, after_last = policy.step(last_in, h[:, :, e - 1, -1])
        torch.testing.assert_close(h[:, :, e, 0], after_last, rtol=0, atol=0)
    # The first input of episode e > 1 says an episode ended: d = 1, with its last reward.
    x = trials.by_episode(trials.inputs)
    assert torch.all(x[:, :, 0, 0, -1] == 0) and torch.all(x[:, :, 1:, 0, -1] == 1)
    r = trials.by_episode(trials.rewards)
    torch.testing.assert_close(x[:, :, 1, 0, -2], r[:, :, 0, -1])
    # A new trial (a fresh rollout) starts from zero again.
    again = trial_rollout(policy, env, _goals(2), episodes=1, generator=gen, record_hidden=True)
    assert again.hidden is not None and torch.all(again.hidden[:, :, 0] == 0)


def test_the_memory_changes_behaviour_in_the_next_episode_only_through_the_hidden_state() -> None:
    """Behavioural check: the first action of episode 2 (same observation, the origin, as the
    first action of episode 1) differs from it, and equals what a step from the carried state
    gives; from a zero state with the same input it would be different again."""
    torch.manual_seed(0)
    policy = RecurrentGaussianPolicy(2, 2, hidden=8)
    env = Navigation2D(2, horizon=5, action_scale=0.1)
    trials = trial_rollout(
        policy,
        env,
        _goals(1),
        episodes=2,
        generator=torch.Generator().manual_seed(0),
        record_hidden=True,
    )
    x, h = trials.by_episode(trials.inputs), trials.by_episode(trials.hidden)
    torch.testing.assert_close(x[:, :, 1, 0, :2], x[:, :, 0, 0, :2])  # both at the origin
    carried, _, _ = policy.step(x[:, :, 1, 0], h[:, :, 1, 0])
    fresh, _, _ = policy.step(x[:, :, 1, 0], torch.zeros_like(h[:, :, 1, 0]))
    first, _, _ = policy.step(x[:, :, 0, 0], h[:, :, 0, 0])
    assert not torch.allclose(carried, fresh) and not torch.allclose(carried, first)


def test_masked_steps_freeze_the_memory_and_evaluate_reproduces_the_rollout() -> None:
    """An episode that ends early: its masked steps leave the hidden state and the previous
    step's inputs alone; re-running the stored trial (PPO's evaluate) gives the rollout's own
    log-probabilities."""
    torch.manual_seed(0)
    policy = RecurrentGaussianPolicy(2, 2, hidden=8, init_std=1e-3, min_std=1e-6)
    env = Navigation2D(2, horizon=8)
    goals = torch.tensor([[0.1, 0.0], [0.4, 0.4]])  # the first is reached in one step
    with torch.no_grad():
        policy.mean.weight.zero_()
        policy.mean.bias.copy_(torch.tensor([0.1, 0.0]))
    trials = trial_rollout(
        policy,
        env,
        goals,
        episodes=2,
        generator=torch.Generator().manual_seed(0),
        record_hidden=True,
    )
    mask, h = trials.by_episode(trials.mask), trials.by_episode(trials.hidden)
    assert torch.all(mask[0, :, :, 0] == 1) and torch.all(mask[0, :, :, 1:] == 0)
    assert torch.all(mask[1] == 1)
    # Goal 0: the state after step 0 is carried, unchanged, to the start of episode 2.
    for t in range(2, 8):
        torch.testing.assert_close(h[0, :, 0, t], h[0, :, 0, 1])
    torch.testing.assert_close(h[0, :, 1, 0], h[0, :, 0, 1])
    logp, _, _ = policy.evaluate(trials.inputs, trials.actions, trials.mask)
    torch.testing.assert_close(logp, trials.log_probs * trials.mask, rtol=1e-4, atol=1e-4)


def test_value_statistics_update_preserves_the_values() -> None:
    """PopArt: moving (μ, σ) to the targets' moments rescales the head, not the prediction."""
    torch.manual_seed(0)
    policy = RecurrentGaussianPolicy(2, 2, hidden=8)
    with torch.no_grad():
        policy.value.weight.normal_()
        policy.value.bias.fill_(0.3)
    trials = trial_rollout(
        policy,
        Navigation2D(2, horizon=5),
        _goals(2),
        episodes=2,
        generator=torch.Generator().manual_seed(0),
    )
    _, _, before = policy.evaluate(trials.inputs, trials.actions, trials.mask)
    targets = -40 + 5 * torch.randn(trials.rewards.shape)
    policy.update_value_statistics(targets, trials.mask)
    _, _, after = policy.evaluate(trials.inputs, trials.actions, trials.mask)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-4)
    # The first update takes the targets' own moments.
    assert math.isclose(
        float(policy.value_mean), float(targets[trials.mask > 0].mean()), rel_tol=1e-5
    )
    assert math.isclose(
        float(policy.value_std), float(targets[trials.mask > 0].std(unbiased=False)), rel_tol=1e-4
    )


# --- GAE and PPO against hand computations -------------------------------------------------


def test_gae_three_steps_by_hand() -> None:
    r, v = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.0, 1.5])
    g, lam = 0.9, 0.5
    d2 = 3.0 - 1.5  # the trial's last step: V after it is 0
    d1 = 2.0 + g * 1.5 - 1.0
    d0 = 1.0 + g * 1.0 - 0.5
    a2, a1 = d2, d1 + g * lam * d2
    a0 = d0 + g * lam * a1
    adv, ret = gae(r, v, torch.ones(3), discount=g, lam=lam)
    torch.testing.assert_close(adv, torch.tensor([a0, a1, a2]))
    torch.testing.assert_close(ret, torch.tensor([a0 + 0.5, a1 + 1.0, a2 + 1.5]))
    # λ = 1 gives the discounted return minus the value.
    adv1, _ = gae(r, v, torch.ones(3), discount=g, lam=1.0)
    mc = torch.tensor([1 + g * 2 + g * g * 3, 2 + g * 3, 3.0])
    torch.testing.assert_close(adv1, mc - v)


def test_gae_skips_masked_steps_and_crosses_episode_boundaries() -> None:
    # Episode 1 ends after its first step (then a masked step); episode 2 has two steps. The
    # step before the gap bootstraps from the first step of episode 2, one discount away.
    r = torch.tensor([1.0, 0.0, 2.0, 3.0])
    v = torch.tensor([0.5, 9.0, 1.0, 1.5])  # the masked value (9) must not be used
    m = torch.tensor([1.0, 0.0, 1.0, 1.0])
    g, lam = 0.9, 0.5
    adv, ret = gae(r, v, m, discount=g, lam=lam)
    compact, _ = gae(r[[0, 2, 3]], v[[0, 2, 3]], torch.ones(3), discount=g, lam=lam)
    torch.testing.assert_close(adv[[0, 2, 3]], compact)
    assert adv[1] == 0 and ret[1] == 0


def test_clipped_surrogate_by_hand() -> None:
    eps = 0.2
    # ratios 1.5 (above 1 + ε), 0.5 (below 1 - ε), 1.1 (inside), 1.5 with A < 0 (unclipped
    # side is the min), and a masked step that must not count.
    ratio = torch.tensor([1.5, 0.5, 1.1, 1.5, 3.0])
    adv = torch.tensor([2.0, 1.0, -1.0, -1.0, 5.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    old = torch.zeros(5)
    new = ratio.log().requires_grad_()
    loss, clip_frac, kl = clipped_surrogate(new, old, adv, mask, clip=eps)
    # min(ρA, clip(ρ)A): 1.2·2 = 2.4; min(0.5, 0.8) = 0.5; 1.1·(-1) = -1.1; min(-1.5, -1.2) = -1.5
    expected = -(2.4 + 0.5 - 1.1 - 1.5) / 4
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-6)
    assert math.isclose(float(clip_frac), 3 / 4, rel_tol=1e-6)  # 1.5, 0.5, 1.5 are outside
    k3 = sum((p - 1) - math.log(p) for p in (1.5, 0.5, 1.1, 1.5)) / 4
    assert math.isclose(float(kl), k3, rel_tol=1e-6)
    loss.backward()  # type: ignore[no-untyped-call]
    # Clipped terms carry no gradient: only steps 1 (ρ = 0.5 < 0.8, A > 0: min is ρA), 2 and 3.
    assert new.grad is not None
    torch.testing.assert_close(new.grad, torch.tensor([0.0, -0.5, 1.1, 1.5, 0.0]) / 4)


def test_value_loss_by_hand() -> None:
    v, t, m = (
        torch.tensor([1.0, 2.0, 7.0]),
        torch.tensor([0.0, 4.0, 0.0]),
        torch.tensor([1.0, 1, 0]),
    )
    assert math.isclose(float(value_loss(v, t, m)), 0.5 * (1 + 4) / 2)


# --- the learner ---------------------------------------------------------------------------


def test_registered_and_built_from_a_config() -> None:
    spec = LEARNERS.get("rl2")
    assert spec.recipe == "rl" and not spec.backbone
    learner = spec.build(TINY, BuildContext(input_shape=(2,), outputs=2))
    assert isinstance(learner, RL2)
    config = load_config("rl2_navigation2d")
    assert isinstance(config.model, RL2Config) and config.data.dataset == "navigation2d"
    built = spec.build(config.model, BuildContext(input_shape=(2,), outputs=2, discount=0.9))
    assert built.discount == 0.9  # γ is [rl] discount's, through the build context


def _state(learner: RL2) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in learner.state_dict().items()}


def test_train_iteration_is_deterministic_and_training_state_round_trips() -> None:
    env = Navigation2D(3, horizon=10, action_scale=0.1)
    a = _learner()
    learner: MetaRLLearner = a
    metrics = learner.train_iteration(env, seed=5, iteration=0, meta_batch=2)
    assert {"return", "return_episode_1", "return_episode_2", "approx_kl"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    # A copy restored from the weights and the training state makes the identical next step.
    b = _learner(seed=1)
    b.load_state_dict(a.state_dict())
    b.load_training_state(copy.deepcopy(a.training_state()))
    before = _state(a)
    ma = a.train_iteration(env, seed=5, iteration=1, meta_batch=2)
    mb = b.train_iteration(env, seed=5, iteration=1, meta_batch=2)
    assert ma == mb
    for k, v in _state(a).items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    assert any(not torch.equal(v, before[k]) for k, v in a.state_dict().items())
    # Two fresh learners with the same weights and (seed, iteration) agree; another iteration
    # draws other tasks.
    c, d = _learner(), _learner()
    assert c.train_iteration(env, seed=5, iteration=0, meta_batch=2) == metrics
    assert d.train_iteration(env, seed=5, iteration=7, meta_batch=2) != metrics


def test_evaluate_leaves_the_weights_alone_and_reports_each_episode() -> None:
    env = Navigation2D(3, horizon=10, action_scale=0.1)
    learner = _learner()
    before = _state(learner)
    out = learner.evaluate(env, _goals(4), generator=torch.Generator().manual_seed(0))
    assert list(out) == ["episode_1", "episode_2"]
    assert all(v.shape == (4,) and torch.isfinite(v).all() for v in out.values())
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_too_many_minibatches_is_a_config_error() -> None:
    env = Navigation2D(1, horizon=4)
    learner = _learner(RL2Config(algorithm="rl2", hidden=4, minibatches=5))
    with pytest.raises(ConfigError, match="minibatches"):
        learner.train_iteration(env, seed=0, iteration=0, meta_batch=2)
