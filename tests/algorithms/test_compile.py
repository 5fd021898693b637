"""The MAML family under torch.compile: one graph, no breaks, the eager meta-gradient.

``fullgraph=True`` makes any graph break an error, so these tests fail if a layer asks
something Dynamo cannot trace (as ``under_vmap``'s functorch queries once did, which left the
whole meta-loss running eagerly under a "compiled" name). The ``aot_eager`` backend traces
forward and backward exactly as inductor would see them but runs them with eager kernels, so
the check needs no C++ compiler and takes seconds; the inductor-compiled meta-gradient was
checked the same way by hand (float64, Conv-4, vmap, second order: differences below 1e-14).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnemeta.algorithms.maml import MAML, Classifier
from mnemeta.episode import EpisodeBatch
from mnemeta.nn import Conv4


def _batch(tasks: int = 3, ways: int = 3) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    shots, queries = 1, 2
    return EpisodeBatch(
        torch.rand(tasks, ways * shots, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1),
        torch.rand(tasks, ways * queries, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1),
        ways,
    )


def _meta_grads(learner: nn.Module, meta_loss, batch: EpisodeBatch):  # type: ignore[no-untyped-def]
    learner.zero_grad()
    loss, metrics = meta_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    return loss.detach(), metrics, grads


@pytest.mark.parametrize(
    "switches",
    [
        {},  # MAML, second order
        {"first_order": True},
        {"learn_inner_lr": True},  # Meta-SGD
        {"adapt": ("head.",)},  # ANIL
    ],
    ids=["maml", "fomaml", "metasgd", "anil"],
)
def test_compiled_meta_loss_is_one_graph_with_the_eager_gradient(switches: dict) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = Classifier(Conv4(1, 4, track_running_stats=False), 4, 3).double()
    learner = MAML(net, inner_lr=0.4, inner_steps=2, strategy="vmap", **switches)
    batch = _batch()
    eager_loss, eager_metrics, eager = _meta_grads(learner, learner.meta_loss, batch)
    compiled = torch.compile(learner.meta_loss, backend="aot_eager", fullgraph=True)
    loss, metrics, grads = _meta_grads(learner, compiled, batch)

    torch.testing.assert_close(loss, eager_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(metrics["accuracy"], eager_metrics["accuracy"])
    assert grads.keys() == eager.keys()
    if switches.get("learn_inner_lr"):
        assert any(n.startswith("inner_lrs.") for n in grads)
    for name in eager:
        torch.testing.assert_close(grads[name], eager[name], rtol=1e-10, atol=1e-12, msg=name)
