"""Adaptation-time fine-tuning on the support set alone, SetFit-style, then prototypes.

SetFit (Tunstall et al. 2022) fine-tunes a sentence encoder on pairs of the few labelled
examples — cosine similarity pushed to 1 for a pair of one class and to 0 for a pair of two
(its ``CosineSimilarityLoss``) — and then fits a head. Here the same contrastive objective
trains the backbone over frozen embeddings (the residual adapter of :mod:`mnemeta.nn.adapter`)
on each episode's support, and the head is the nearest cosine prototype of the adapted support.
Two uses:

* ``(d)`` alone: the adapter starts as the identity (never meta-trained, ``train.steps`` can be
  tiny), so only the support shapes it;
* ``(b) + (d)``: meta-train the adapter episodically as a ProtoNet (``meta_loss`` is ProtoNet's),
  then fine-tune it on each support at test time.

Every pair of the support is used, in matrix form (SetFit samples pairs; with ≤ 1,500 examples
the full similarity matrix is cheap), with the positive and negative pairs weighted equally as
SetFit's balanced sampling does. Fine-tuning runs for all tasks of a batch at once:
``torch.func.vmap`` of ``torch.func.grad`` over per-task copies of the adapter's weights, and
the inner optimiser's Adam (:mod:`mnemeta.algorithms.inner_optim`) on the stacked copies — no
per-task loop, and the meta-parameters are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mnemeta.algorithms.inner_optim import adam, apply_updates
from mnemeta.algorithms.protocol import Predictor
from mnemeta.algorithms.protonet import ProtoNet, cosine_similarity, prototypes
from mnemeta.checks import checked
from mnemeta.episode import Support
from mnemeta.registry import LEARNERS, BuildContext, EpisodicConfig, LearnerSpec


def pair_loss(z: Tensor, y: Tensor) -> Tensor:
    """SetFit's cosine-similarity loss over every pair of one support set.

    ``z`` ``(S, D)`` embeddings, ``y`` ``(S,)`` labels -> the mean squared error of each pair's
    cosine to 1 (same class) or 0 (different classes), the two kinds weighted equally. A 1-shot
    support has no positive pair: then only the negative term is left.
    """
    cos = cosine_similarity(z.unsqueeze(0), z.unsqueeze(0))[0]
    same = (y.unsqueeze(0) == y.unsqueeze(1)).to(z.dtype)
    off_diagonal = 1.0 - torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
    positive, negative = same * off_diagonal, (1.0 - same)
    pos_term = ((cos - 1.0).square() * positive).sum() / positive.sum().clamp_min(1.0)
    neg_term = (cos.square() * negative).sum() / negative.sum().clamp_min(1.0)
    return pos_term + neg_term


class SupportFinetune(ProtoNet):
    """ProtoNet whose ``adapt`` first fine-tunes the backbone on each support set's pairs.

    Args:
        encoder: a backbone over features with parameters (the residual adapter).
        steps: Adam steps of fine-tuning per support set.
        lr: their learning rate.
        scale: the cosine prototypes' temperature (see :class:`ProtoNet`).
    """

    def __init__(
        self, encoder: nn.Module, *, steps: int = 30, lr: float = 1e-4, scale: float = 10.0
    ) -> None:
        super().__init__(encoder, distance="cosine", scale=scale)
        self.steps, self.lr = steps, lr

    def adapt(self, support: Support) -> Predictor:
        params = {n: p.detach() for n, p in self.encoder.named_parameters()}
        buffers = dict(self.encoder.named_buffers())
        tasks = support.x.shape[0]
        # One copy of the weights per task, fine-tuned together.
        stacked = {n: p.unsqueeze(0).expand(tasks, *p.shape).clone() for n, p in params.items()}

        def embed(weights: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(self.encoder, (weights, buffers), (x,))

        def loss(weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            return pair_loss(embed(weights, x), y)

        task_grads = vmap(grad(loss))
        # The one inner optimiser's Adam: its update is element-wise, so the stacked copies
        # (a leading task dimension) step as the tasks would one by one.
        optimizer = adam(self.lr)
        state = optimizer.init(stacked)
        with torch.enable_grad():  # evaluation runs under no_grad; torch.func.grad needs none
            for _ in range(self.steps):
                grads = task_grads(stacked, support.x, support.y)
                updates, state = optimizer.update(grads, state, stacked)
                stacked = apply_updates(stacked, updates)
        stacked = {n: w.detach() for n, w in stacked.items()}
        z_support = vmap(embed)(stacked, support.x)
        protos = prototypes(z_support, support.y, support.n_way)

        def predict(query_x: Tensor) -> Tensor:
            return self.scale * cosine_similarity(vmap(embed)(stacked, query_x), protos)

        return predict


@dataclass
class SupportFinetuneConfig(EpisodicConfig):
    backbone: str = "adapter"  # fine-tuning needs weights: the residual adapter over embeddings
    finetune_steps: int = checked(30, ge=0)  # Adam steps on each support's pairs
    # ... and their learning rate: 1e-4 keeps a 1-shot support (negative pairs only) from
    # pulling the adapter away from the encoder (1e-3: -8 points at 5-way 1-shot on CLINC150).
    finetune_lr: float = checked(1e-4, gt=0)
    scale: float = checked(10.0, gt=0)  # the cosine prototypes' temperature


def _build(cfg: SupportFinetuneConfig, ctx: BuildContext) -> SupportFinetune:
    return SupportFinetune(
        ctx.build_backbone(per_task_statistics=False),
        steps=cfg.finetune_steps,
        lr=cfg.finetune_lr,
        scale=cfg.scale,
    )


LEARNERS.register(
    LearnerSpec(
        "support_finetune",
        SupportFinetuneConfig,
        "cosine ProtoNet whose adapt fine-tunes the backbone on the support's pairs "
        "(SetFit's objective, Tunstall et al. 2022)",
        build=_build,
    )
)
