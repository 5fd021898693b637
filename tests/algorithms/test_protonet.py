"""Prototypical Networks against values computed by hand (Snell et al. eqs. 1-2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mnemeta.algorithms import ProtoNet, prototypes, squared_euclidean
from mnemeta.algorithms.protonet import ProtoNetConfig
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.errors import MnemetaError
from mnemeta.registry import LEARNERS, BuildContext


def test_prototypes_are_class_means_in_any_order() -> None:
    z = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 0.0]]])
    y = torch.tensor([[1, 0, 1, 0]])
    expected = torch.tensor([[[4.0, 1.0], [0.5, 2.0]]])
    torch.testing.assert_close(prototypes(z, y, 2), expected)


def test_squared_euclidean() -> None:
    a = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    b = torch.tensor([[[3.0, 4.0]]])
    torch.testing.assert_close(squared_euclidean(a, b), torch.tensor([[[25.0], [13.0]]]))


def test_meta_loss_by_hand_with_identity_encoder() -> None:
    # Identity encoder: embeddings are the inputs, so every number can be checked on paper.
    learner = ProtoNet(nn.Flatten())
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # class 0 at (0,0), class 1 at (2,0)
    query = torch.tensor([[[0.5, 0.0]]])  # true class 0; distances 0.25 and 2.25
    batch = EpisodeBatch(support, torch.tensor([[0, 1]]), query, torch.tensor([[0]]), n_way=2)
    loss, metrics = learner.meta_loss(batch)
    expected = -math.log(math.exp(-0.25) / (math.exp(-0.25) + math.exp(-2.25)))
    assert abs(loss.item() - expected) < 1e-6
    assert metrics["accuracy"].item() == 1.0
    logits = learner.adapt(Support(support, torch.tensor([[0, 1]]), 2))(query)
    torch.testing.assert_close(logits, torch.tensor([[[-0.25, -2.25]]]))


def test_registered_protonet_builds_from_its_config() -> None:
    """What the CLI builds: the configured distance (the paper's squared Euclidean by default)
    over the backbone, whose BN keeps running statistics for evaluation."""
    asked: list[bool] = []

    def backbone(*, per_task_statistics: bool) -> nn.Module:
        asked.append(per_task_statistics)
        return nn.Flatten()

    ctx = BuildContext(input_shape=(4,), backbone=backbone)
    net = LEARNERS.get("protonet").build(ProtoNetConfig(distance="cosine"), ctx)
    assert isinstance(net, ProtoNet) and net.distance == "cosine" and asked == [False]
    assert isinstance(net.encoder, nn.Flatten)
    assert LEARNERS.get("protonet").build(ProtoNetConfig(), ctx).distance == "sqeuclidean"


def test_unknown_distance_message() -> None:
    with pytest.raises(
        MnemetaError,
        match=r"^model\.distance='manhattan' is unknown; choose sqeuclidean or cosine$",
    ):
        ProtoNet(nn.Flatten(), distance="manhattan")
