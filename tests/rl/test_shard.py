"""A meta-batch split over ranks (mnemeta.rl.shard) gives one process's meta-RL update.

The ranks here are threads that sum over each other with a barrier (a stand-in for gloo's
all-reduce: the same contract, called by every rank in the same order), so the algorithms are
checked on their own, in seconds; tests/test_distributed.py runs the recipe on real gloo
processes. Float64: the only difference allowed is the order of floating-point sums, which
TRPO's conjugate gradient on a near-singular Fisher (damping 1e-5) amplifies: scaling every sum
by (1 + 1e-15) in one process moved the first iteration's KL by 3e-10 and the second's by 8e-6
(relative, first-order MAML, measured). Hence the first iteration is held to 1e-7 and the later
ones to 1e-4; a wrong weight or denominator is off by percents.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from mnemeta.config import load_config
from mnemeta.errors import ConfigError
from mnemeta.recipes.rl_train import build_environment, build_rl_learner
from mnemeta.rl import shard as sh
from mnemeta.rl.shard import TaskShard

TINY = ["rl.trajectories=3", "train.meta_batch=5", "rl.horizon=20"]


class ThreadRanks:
    """``world`` threads that sum tensors over each other, as an all-reduce does."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list[Tensor | None] = [None] * world
        self.calls = [0] * world

    def summer(self, rank: int) -> Callable[[Tensor], Tensor]:
        def sum_over_ranks(value: Tensor) -> Tensor:
            self.calls[rank] += 1
            self.slots[rank] = value.detach().clone()
            self.barrier.wait()
            out = sum(s for s in self.slots if s is not None)  # rank order, as gloo's ring is not
            self.barrier.wait()
            assert isinstance(out, Tensor)
            return out

        return sum_over_ranks

    def run(self, body: Callable[[int], Any]) -> list[Any]:
        results: list[Any] = [None] * self.world
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            try:
                results[rank] = body(rank)
            except BaseException as e:  # surfaced below, and the others released
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        if errors:
            raise errors[0]
        return results


def shards(world: int, total: int, ranks: ThreadRanks) -> list[TaskShard]:
    out = []
    for r in range(world):
        base, extra = divmod(total, world)
        lo = r * base + min(r, extra)
        out.append(TaskShard(lo, lo + base + (r < extra), total, ranks.summer(r)))
    return out


def build(preset: str, settings: list[str]) -> tuple[Any, Any, Any]:
    config = load_config(preset, [*TINY, *settings])
    torch.manual_seed(0)
    env = build_environment(config)
    learner = build_rl_learner(config, env).double()
    return config, env, learner


def split_run(preset: str, settings: list[str], world: int, iterations: int = 2) -> None:
    """``iterations`` of one process against ``world`` thread-ranks: equal metrics, weights,
    optimiser state, and held-out columns assembled from the ranks' rows."""
    config, env, learner = build(preset, settings)
    ranks = ThreadRanks(world)
    parts = shards(world, config.train.meta_batch, ranks)
    copies = [copy.deepcopy(learner) for _ in range(world)]
    envs = [build_environment(config) for _ in range(world)]
    mb = config.train.meta_batch

    alone = [
        learner.train_iteration(env, seed=3, iteration=i, meta_batch=mb) for i in range(iterations)
    ]

    def body(rank: int) -> list[dict[str, float]]:
        return [
            copies[rank].train_iteration(
                envs[rank], seed=3, iteration=i, meta_batch=mb, shard=parts[rank]
            )
            for i in range(iterations)
        ]

    split = ranks.run(body)
    for rank in range(world):
        for i, (one, other) in enumerate(zip(alone, split[rank], strict=True)):
            assert one.keys() == other.keys()
            rel = 1e-7 if i == 0 else 1e-4
            for k in one:
                assert other[k] == pytest.approx(one[k], rel=rel, abs=1e-12), (rank, i, k)
        for (name, w), w_split in zip(
            learner.state_dict().items(), copies[rank].state_dict().values(), strict=True
        ):
            torch.testing.assert_close(w_split, w, rtol=1e-5, atol=1e-6, msg=name)
    assert len(set(ranks.calls)) == 1  # every rank made the same collectives

    # Evaluation, at the same weights: each rank's rows of 5 held-out tasks with the whole
    # test's draws.
    for c in copies:
        c.load_state_dict(learner.state_dict())
    tasks = env.sample_tasks(5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    whole = learner.evaluate(env, tasks, generator=torch.Generator().manual_seed(10))
    eval_parts = shards(world, 5, ranks)

    def evaluate(rank: int) -> dict[str, Tensor]:
        s = eval_parts[rank]
        return copies[rank].evaluate(
            envs[rank], s.part(tasks), generator=torch.Generator().manual_seed(10), shard=s
        )

    rows = ranks.run(evaluate)
    for name, column in whole.items():
        joined = torch.cat([r[name] for r in rows])
        torch.testing.assert_close(joined, column, rtol=1e-9, atol=1e-12, msg=name)


def test_maml_rl_trpo_split_over_ranks_is_one_process() -> None:
    split_run("maml_rl_navigation2d", ["model.eval_steps=2"], world=2)


def test_maml_rl_trpo_uneven_split_and_three_ranks() -> None:
    split_run("maml_rl_navigation2d", ["model.eval_steps=1", "model.first_order=true"], world=3)


def test_maml_rl_ppo_outer_split_over_ranks_is_one_process() -> None:
    split_run("maml_rl_navigation2d", ["model.outer=ppo", "model.eval_steps=1"], world=2)


def test_rl2_split_over_ranks_is_one_process() -> None:
    # 5 tasks x 3 trials in 4 mini-batches over 2 ranks: mini-batches span both ranks'
    # trials, and some hold none of one rank's; the entropy bonus on, shared once.
    split_run("rl2_navigation2d", ["model.minibatches=4", "model.entropy_coef=0.01"], world=2)


def test_draws_for_a_shard_are_the_whole_batch_rows() -> None:
    gen = torch.Generator().manual_seed(1)
    whole = torch.randn((5, 3, 2), generator=gen, dtype=torch.float64)
    seeds = torch.randint(0, 100, (5 * 3,), generator=gen)
    gen = torch.Generator().manual_seed(1)
    part = TaskShard(2, 4, 5, lambda t: t)
    eps = sh.normal((2, 3, 2), generator=gen, dtype=torch.float64, device=None, shard=part)
    torch.testing.assert_close(eps, whole[2:4], rtol=0, atol=0)
    own = sh.integers(100, tasks=2, per_task=3, generator=gen, shard=part)
    assert own.tolist() == seeds[6:12].tolist()


def test_share_of_mean_sums_to_the_batch_mean() -> None:
    values = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    parts = [TaskShard(0, 1, 4, lambda t: t), TaskShard(1, 4, 4, lambda t: t)]
    got = sh.share_of_mean(values[:1], parts[0]) + sh.share_of_mean(values[1:], parts[1])
    assert float(got) == pytest.approx(float(values.mean()))
    assert sh.share_of_mean(values, None) is not None


def test_a_shard_without_tasks_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least one task"):
        TaskShard(2, 2, 2, lambda t: t)
