"""Meta Memory Network against hand computations (the contract suite checks the rest)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mnemeta.algorithms import ProtoNet
from mnemeta.algorithms.meta_memory import MetaMemoryConfig, MetaMemoryNet
from mnemeta.data.glyphs import make_glyphs
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.nn import Conv4
from mnemeta.registry import LEARNERS, BuildContext


def test_no_hops_no_steps_no_vote_is_protonet() -> None:
    # Snell et al. §2.4: −‖q − c‖² = 2c·q − ‖c‖² − ‖q‖², and ‖q‖² is the same for every class,
    # so the memory-initialised linear layer gives ProtoNet's softmax.
    torch.manual_seed(0)
    encoder = Conv4(1, 8).double().eval()
    mmn = MetaMemoryNet(encoder, 8, hops=0, inner_steps=0).double().eval()
    with torch.no_grad():
        mmn.vote_weight.zero_()
    batch = EpisodeSampler(make_glyphs(10, 4, image_size=16), ways=3, shots=2, queries=2).sample(2)
    support = Support(batch.support_x.double(), batch.support_y, 3)
    ours = mmn.adapt(support)(batch.query_x.double())
    theirs = ProtoNet(encoder).adapt(support)(batch.query_x.double())
    torch.testing.assert_close(ours.log_softmax(-1), theirs.log_softmax(-1))


def test_one_fine_tuning_step_and_one_hop_by_hand() -> None:
    # Identity encoder on 2-d inputs, one hop with P = 0.5·I, β = ln 3, one step.
    mmn = MetaMemoryNet(nn.Flatten(), 2, hops=1, inner_steps=1, strength=1.0).double()
    with torch.no_grad():
        mmn.hop_maps[0].weight.copy_(0.5 * torch.eye(2))
        mmn.log_strength.fill_(math.log(math.log(3.0)))  # β = exp(log_strength) = ln 3
        mmn.step_weight.copy_(torch.tensor([0.1, 0.2]))
        mmn.step_bias.fill_(0.3)
        mmn.vote_weight.fill_(0.5)
    sx = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    sy = torch.tensor([[0, 1]])
    qx = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)

    # Support items: cosines 1 and 0 with themselves and the other, weights ¾, ¼ (β = ln 3).
    # Reads: s0 → ¾(1,0) + ¼(0,1) = (¾, ¼); s1 → (¼, ¾). Hop: h = s + ½ read.
    h = torch.tensor([[1.375, 0.125], [0.125, 1.375]], dtype=torch.float64)
    w0 = 2 * h  # class means are the items themselves (one shot)
    b0 = -(h**2).sum(-1)
    logits = h @ w0.T + b0
    p = logits.softmax(-1)
    err = p - torch.eye(2, dtype=torch.float64)  # ∂CE/∂logits per item, mean over 2 items
    g_w = err.T @ h / 2
    g_b = err.sum(0) / 2
    w1 = w0 - torch.tensor([0.1, 0.2], dtype=torch.float64) * g_w
    b1 = b0 - 0.3 * g_b
    # Query (2, 0): cosines 1, 0 → read (¾, ¼), q = (2, 0) + ½(¾, ¼) = (2.375, 0.125); its
    # own cosines are 0.998…, 0.0525…: the label vote is read again with q.
    q = torch.tensor([2.375, 0.125], dtype=torch.float64)
    cos = torch.stack([q[0], q[1]]) / q.norm()
    vote = (math.log(3.0) * cos).softmax(-1)
    expected = q @ w1.T + b1 + 0.5 * (vote + 1e-8).log()

    out = mmn.adapt(Support(sx, sy, 2))(qx)
    # 1e-7: the memory's cosine adds 1e-8 to the norms (a zero row stays finite).
    torch.testing.assert_close(out[0, 0], expected, rtol=1e-7, atol=1e-7)
    # meta_loss runs the same computation (one step in training, too).
    batch = EpisodeBatch(sx, sy, qx, torch.tensor([[0]]), 2)
    loss, _ = mmn.meta_loss(batch)
    torch.testing.assert_close(loss, -expected.log_softmax(-1)[0], rtol=1e-7, atol=1e-7)


def test_registered_meta_memory_builds_from_its_config() -> None:
    """What the CLI builds: every key reaches the network (non-default values), the feature
    size is the backbone's (4 for Conv4(1, 4) on 16 x 16), BN keeps running statistics."""
    asked: list[bool] = []

    def backbone(*, per_task_statistics: bool) -> nn.Module:
        asked.append(per_task_statistics)
        return Conv4(1, 4, track_running_stats=not per_task_statistics)

    ctx = BuildContext(input_shape=(1, 16, 16), backbone=backbone)
    cfg = MetaMemoryConfig(
        hops=3, inner_lr=0.2, inner_steps=2, eval_inner_steps=5, strength=4.0, first_order=True
    )
    net = LEARNERS.get("meta_memory").build(cfg, ctx)
    assert isinstance(net, MetaMemoryNet) and asked == [False]
    assert (net.feature_dim, net.hops, net.inner_steps, net.eval_inner_steps) == (4, 3, 2, 5)
    assert net.first_order is True and len(net.hop_maps) == 3
    assert math.isclose(float(net.log_strength.detach().exp()), 4.0, rel_tol=1e-6)
    assert torch.allclose(net.step_weight, torch.full((4,), 0.2))
    assert float(net.step_bias.detach()) == pytest.approx(0.2)
    plain = LEARNERS.get("meta_memory").build(MetaMemoryConfig(), ctx)
    assert (plain.hops, plain.inner_steps, plain.eval_inner_steps) == (2, 1, 1)
    assert plain.first_order is False
    assert math.isclose(float(plain.log_strength.detach().exp()), 10.0, rel_tol=1e-6)
    assert float(plain.step_bias.detach()) == pytest.approx(0.01)
