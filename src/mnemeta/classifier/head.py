"""An adapted head over the stored examples: a cosine classifier trained on request.

Nearest prototypes need no training, but they weigh every example alike and every dimension of
the embedding alike. The head is one weight vector per class, ``logits = s · cos(z, w_c)``
(a cosine classifier, as Baseline++ of Chen et al. 2019 and Gidaris & Komodakis 2018), trained
by cross-entropy on the stored examples' frozen embeddings. Its start is what makes it cheap to
keep up to date: each class starts from its row of the last head kept in the task memory, or
from its prototype when it is new, so a grown or recurring class set starts from the last
adaptation (the warm start of the task memory) instead of from scratch. A pull of strength
``pull`` towards that start, ``pull · Σ_c ||w_c − w_c⁰||²``, keeps few-shot classes from drifting
far from what their examples and past adaptations said (the task memory's pull towards
remembered parameters, here with one remembered task).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.algorithms.inner_optim import adam, apply_updates
from mnemeta.classifier.calibration import unit


@dataclass(frozen=True)
class HeadFit:
    """A trained head and how training went."""

    weight: Tensor  # (C, D), rows of unit length
    loss_before: float
    loss_after: float
    accuracy_before: float  # on the stored examples, percent
    accuracy_after: float
    steps: int


def train_head(
    z: Tensor,
    y: Tensor,
    start: Tensor,
    *,
    steps: int = 100,
    lr: float = 0.01,
    scale: float = 10.0,
    pull: float = 1.0,
) -> HeadFit:
    """Train a cosine classifier from ``start``.

    Args:
        z: ``(N, D)`` example embeddings; ``y``: ``(N,)`` class indices in ``[0, C)``.
        start: ``(C, D)`` the initial class vectors (the last head's rows, or prototypes).
        steps: full-batch Adam steps; ``lr`` its learning rate.
        scale: the logits' temperature ``s``.
        pull: strength of the pull towards ``start``.
    """
    z = unit(z.detach().float())
    w0 = unit(start.detach().float())
    # mnemeta's own Adam (the inner loops' optimiser): torch.optim's first use in a process
    # imports torch._dynamo, 4 s of a 4 s `mnemeta classes fit`.
    opt = adam(lr)
    params = {"w": w0.clone()}
    state = opt.init(params)

    def loss_acc(w: Tensor) -> tuple[Tensor, float]:
        logits = scale * z @ unit(w).T
        loss = torch.nn.functional.cross_entropy(logits, y)
        acc = 100 * float((logits.argmax(1) == y).float().mean())
        return loss + pull * (w - w0).square().sum(dim=1).mean(), acc

    loss0, acc0 = loss_acc(params["w"])
    for _ in range(steps):
        w = params["w"].requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_acc(w)[0], w)
        updates, state = opt.update({"w": grad}, state, params)
        params = apply_updates({"w": w.detach()}, updates)
    loss1, acc1 = loss_acc(params["w"])
    return HeadFit(unit(params["w"]), float(loss0), float(loss1), acc0, acc1, steps)
