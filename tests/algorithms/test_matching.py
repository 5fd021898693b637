"""Matching Networks against a hand computation of Vinyals et al. eq. 1."""

from __future__ import annotations

import math

import torch
from torch import nn

from mnemeta.algorithms import MatchingNet
from mnemeta.episode import EpisodeBatch


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
