"""Support fine-tuning (SetFit's pair loss), name prototypes and open-set scores, by hand."""

from __future__ import annotations

import math

import torch

from mnemeta.algorithms.open_set import accuracy_with_rejection, auroc, rejection_threshold
from mnemeta.algorithms.support_finetune import SupportFinetune, pair_loss
from mnemeta.algorithms.zero_shot import blended_prototypes, zero_shot_logits
from mnemeta.episode import Support
from mnemeta.nn.adapter import ResidualAdapter


def test_pair_loss_by_hand() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    c = 1 / math.sqrt(2)
    # One positive pair (0, 1): (c - 1)^2. Negative pairs (0, 2): 0^2 and (1, 2): c^2, each
    # counted twice in the symmetric matrix, so their mean is c^2 / 2.
    expected = (c - 1) ** 2 + c**2 / 2
    assert abs(pair_loss(z, y).item() - expected) < 1e-6
    # One shot per class: no positive pair, only the negative term.
    assert abs(pair_loss(z[1:], torch.tensor([0, 1])).item() - c**2) < 1e-6


def test_support_finetune_batch_equals_loop_and_keeps_the_meta_parameters() -> None:
    torch.manual_seed(0)
    learner = SupportFinetune(ResidualAdapter(6, 4), steps=5, lr=1e-2)
    with torch.no_grad():
        learner.encoder.branch[-1].weight.normal_()  # type: ignore[index]
    before = {n: p.clone() for n, p in learner.named_parameters()}
    x, y = torch.randn(3, 6, 6), torch.tensor([0, 0, 1, 1, 2, 2]).expand(3, 6)
    q = torch.randn(3, 4, 6)
    batch = learner.adapt(Support(x, y, 3))(q)
    loop = torch.cat(
        [learner.adapt(Support(x[i : i + 1], y[i : i + 1], 3))(q[i : i + 1]) for i in range(3)]
    )
    assert torch.allclose(batch, loop, atol=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in learner.named_parameters())
    # And fine-tuning did move the weights: the logits differ from no fine-tuning.
    learner.steps = 0
    assert not torch.allclose(learner.adapt(Support(x, y, 3))(q), batch, atol=1e-4)


def test_blended_prototypes_count_the_name_as_one_more_shot() -> None:
    support = torch.tensor([[[2.0, 0.0], [4.0, 0.0], [0.0, 3.0]]])
    labels = torch.tensor([[0, 0, 1]])
    names = torch.tensor([[[0.0, 6.0], [0.0, 1.0]]])
    protos = blended_prototypes(support, labels, 2, names)
    assert protos.tolist() == [[[2.0, 2.0], [0.0, 2.0]]]
    zero = blended_prototypes(support[:, :0], labels[:, :0], 2, names)
    assert torch.equal(zero, names)
    logits = zero_shot_logits(torch.tensor([[[0.0, 1.0]]]), names)
    assert torch.allclose(logits, torch.tensor([[[10.0, 10.0]]]))


def test_auroc_and_rejection_by_hand() -> None:
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    # Pairs (known > unknown): 2>1 yes, 2>3 no, 0.5 for the tie 3=3, 3>1 yes -> 2.5 / 4.
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 3.0])) == 0.625
    unknown = torch.arange(11, dtype=torch.float32)
    assert rejection_threshold(unknown, 0.9) == 9.0
    scores = torch.tensor([0.9, 0.8, 0.2, 0.95])
    predicted, labels = torch.tensor([1, 2, 3, 0]), torch.tensor([1, 2, 3, 1])
    # Rejected below 0.5: the third is wrong by rejection, the fourth by its label -> 2 of 4.
    assert accuracy_with_rejection(scores, predicted, labels, 0.5) == 50.0
