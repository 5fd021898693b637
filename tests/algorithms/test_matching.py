"""Matching Networks against a hand computation of Vinyals et al. eq. 1."""

from __future__ import annotations

import math

import torch
from torch import nn

from mnemeta.algorithms import MatchingNet
from mnemeta.algorithms.matching import MatchingConfig
from mnemeta.episode import EpisodeBatch
from mnemeta.nn import Conv4
from mnemeta.registry import LEARNERS, BuildContext


def test_attention_over_support_by_hand() -> None:
    learner = MatchingNet(nn.Flatten(), scale=1.0)  # the paper's exact form
    # Support: two of class 0 along x, one of class 1 along y. Query along x.
    support = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])
    query = torch.tensor([[[5.0, 0.0]]])
    batch = EpisodeBatch(support, torch.tensor([[0, 0, 1]]), query, torch.tensor([[0]]), n_way=2)
    loss, _ = learner.meta_loss(batch)
    # cosines 1, 1, 0 -> attention e/(2e+1) each for class 0, 1/(2e+1) for class 1
    p0 = 2 * math.e / (2 * math.e + 1)
    assert abs(loss.item() + math.log(p0)) < 1e-6


def test_full_context_embeddings_run_and_differ() -> None:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 8))
    plain, fce = (
        MatchingNet(encoder, embedding_dim=8),
        MatchingNet(encoder, embedding_dim=8, fce=True),
    )
    batch = EpisodeBatch(
        torch.randn(2, 6, 4),
        torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
        torch.randn(2, 3, 4),
        torch.tensor([[0, 1, 2]] * 2),
        n_way=3,
    )
    loss_plain, _ = plain.meta_loss(batch)
    loss_fce, _ = fce.meta_loss(batch)
    loss_fce.backward()
    assert torch.isfinite(loss_fce) and not torch.isclose(loss_plain, loss_fce)
    assert fce.query_cell.weight_ih.grad is not None
    assert fce.support_lstm.weight_ih_l0.grad is not None


def test_registered_matching_builds_from_its_config() -> None:
    """What the CLI builds: fce, its steps and the cosine scale from the config; the FCE
    LSTMs sized by the backbone's features (4 x 1 x 1 for Conv4(1, 4) on 16 x 16); BN with
    running statistics."""
    asked: list[bool] = []

    def backbone(*, per_task_statistics: bool) -> nn.Module:
        asked.append(per_task_statistics)
        return Conv4(1, 4, track_running_stats=not per_task_statistics)

    ctx = BuildContext(input_shape=(1, 16, 16), backbone=backbone)
    net = LEARNERS.get("matching").build(MatchingConfig(fce=True, fce_steps=3, scale=2.5), ctx)
    assert isinstance(net, MatchingNet) and asked == [False]
    assert (net.fce, net.fce_steps, net.scale) == (True, 3, 2.5)
    assert net.query_cell.hidden_size == 4 and net.query_cell.input_size == 8
    plain = LEARNERS.get("matching").build(MatchingConfig(), ctx)
    assert (plain.fce, plain.fce_steps, plain.scale) == (False, 5, 10.0)
