"""The contract every meta-learner in mnemeta passes (DESIGN.md: one common-checks suite).

Add a learner to LEARNERS and it is checked for: the protocol's methods, a finite loss and
metrics, gradients reaching its parameters, ``adapt`` leaving the meta-parameters unchanged,
determinism under a seed, and a batch of tasks scoring the same as the tasks one by one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mnemeta.algorithms import MatchingNet, MetaLearner, ProtoNet
from mnemeta.algorithms.maml import MAML, Classifier
from mnemeta.algorithms.meta_memory import MetaMemoryNet
from mnemeta.algorithms.reptile import Reptile
from mnemeta.data.glyphs import make_glyphs
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.episode import EpisodeBatch
from mnemeta.nn import Conv4

LEARNERS: dict[str, Callable[[], nn.Module]] = {
    "protonet": lambda: ProtoNet(Conv4(1, 8, primitive_bn=False)),
    "protonet-cosine": lambda: ProtoNet(Conv4(1, 8), distance="cosine"),
    "matching": lambda: MatchingNet(Conv4(1, 8), embedding_dim=8),
    "matching-fce": lambda: MatchingNet(Conv4(1, 8), embedding_dim=8, fce=True),
    "maml": lambda: MAML(_net(), inner_lr=0.4, inner_steps=2, eval_inner_steps=3),
    "fomaml": lambda: MAML(_net(), first_order=True),
    "metasgd": lambda: MAML(_net(), inner_lr=0.1, learn_inner_lr=True),
    "anil": lambda: MAML(_net(), adapt=("head.",)),
    "maml-vmap": lambda: MAML(_net(), strategy="vmap"),
    # Full-batch inner steps (support = 6): mini-batches are random draws, which would make a
    # batch of tasks and the same tasks one by one see different mini-batches.
    "reptile": lambda: Reptile(
        _net(), inner_steps=2, eval_inner_steps=3, inner_batch=6, eval_inner_batch=6
    ),
    "meta_memory": lambda: MetaMemoryNet(Conv4(1, 8), 8, hops=2, inner_steps=2, eval_inner_steps=3),
    "meta_memory-first-order": lambda: MetaMemoryNet(Conv4(1, 8), 8, hops=1, first_order=True),
}


def _net() -> nn.Module:
    """Conv-4 with per-task batch statistics and a 3-way head, as MAML uses it."""
    return Classifier(Conv4(1, 8, track_running_stats=False), 8, 3)


@pytest.fixture(scope="module")
def batch() -> EpisodeBatch:
    sampler = EpisodeSampler(make_glyphs(12, 6, image_size=16), ways=3, shots=2, queries=2, seed=1)
    return sampler.sample(4)


def _make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return LEARNERS[name]()


@pytest.mark.parametrize("name", LEARNERS)
def test_follows_the_protocol(name: str) -> None:
    assert isinstance(_make(name), MetaLearner)


@pytest.mark.parametrize("name", LEARNERS)
def test_loss_is_finite_and_reaches_every_parameter(name: str, batch: EpisodeBatch) -> None:
    learner = _make(name)
    loss, metrics = learner.meta_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"loss", "accuracy"} <= set(metrics)
    assert 0.0 <= metrics["accuracy"].item() <= 1.0
    loss.backward()
    for pname, p in learner.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in learner.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", LEARNERS)
def test_adapt_leaves_meta_parameters_unchanged(name: str, batch: EpisodeBatch) -> None:
    learner = _make(name)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    learner.eval()
    logits = learner.adapt(batch.support)(batch.query_x)
    assert logits.shape == (*batch.query_y.shape, batch.n_way)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), f"adapt changed {k}"


@pytest.mark.parametrize("name", LEARNERS)
def test_same_seed_same_result(name: str, batch: EpisodeBatch) -> None:
    a, _ = _make(name).meta_loss(batch)
    b, _ = _make(name).meta_loss(batch)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", LEARNERS)
def test_batch_of_tasks_equals_tasks_one_by_one(name: str, batch: EpisodeBatch) -> None:
    # In eval mode nothing couples the tasks of a batch (BN uses running statistics or the
    # statistics of each task), so the reported query loss must be the mean of per-task losses
    # (the *optimised* loss need not be: Reptile's surrogate is not a mean over tasks), and
    # predictions must match exactly.
    learner = _make(name).double().eval()
    batch64 = EpisodeBatch(
        batch.support_x.double(),
        batch.support_y,
        batch.query_x.double(),
        batch.query_y,
        batch.n_way,
    )
    loss = learner.meta_loss(batch64)[1]["loss"]
    per_task = [learner.meta_loss(batch64.task(i))[1]["loss"] for i in range(batch.n_tasks)]
    torch.testing.assert_close(loss, torch.stack(per_task).mean())
    logits = learner.adapt(batch64.support)(batch64.query_x)
    for i in range(batch.n_tasks):
        one = batch64.task(i)
        torch.testing.assert_close(logits[i : i + 1], learner.adapt(one.support)(one.query_x))
