"""Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification",
ICLR 2019): plain transfer learning with a cosine classifier, no episodes.

Two stages, as in the paper's Figure 1:

pre-training
    the backbone and a cosine classifier over *all* base classes, trained with cross-entropy:
    ``logits_c = s · cos(f(x), w_c)`` with features and class weights L2-normalised and a fixed
    scale ``s`` (the paper's distLinear; ``s = 10`` for the > 200 base classes of Omniglot).
    In mnemeta this is :meth:`BaselinePP.meta_loss`: each episode label is mapped to its base
    class with ``EpisodeBatch.classes``, and every support and query image of the batch is
    classified over the ``classes`` classes of the training split. An episodic sampler with many
    ways and few shots is then a class-balanced mini-batch sampler.
fine-tuning (test time)
    the backbone frozen, a *new* cosine head of ``n_way`` classes (``s = 2``, Chen et al.'s scale
    for heads of ≤ 200 classes) trained on the support features alone with SGD (lr 0.01,
    momentum 0.9, dampening 0.9, weight decay 0.001, as their ``baselinefinetune.py``):
    :meth:`BaselinePP.adapt`.

Departures from Chen et al., each so that ``adapt`` is deterministic and batched:

- the new head starts from the L2-normalised class means of the L2-normalised support features
  (weight imprinting, Qi, Brown & Lowe 2018), not from a random init, so that the same support
  always gives the same head (and, with 0 steps, Baseline++ is a cosine nearest-class-mean
  classifier on the pre-trained features);
- fine-tuning takes full-batch steps (``finetune_steps`` of them; Chen et al. take 100 epochs of
  shuffled mini-batches of 4), so nothing random enters, and every task of the support is
  fine-tuned at once (one head per task, the sum of the per-task mean losses, whose gradient
  for task t's head is that of task t's loss alone);
- the classifier is the paper's pure cosine. The reference code wraps its weights in
  ``WeightNorm``, which gives every class a learnable norm ``g_c`` on top of the cosine
  (their issues #4 and #8); mnemeta follows the paper's equation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mnemeta.algorithms.inner_optim import apply_updates, momentum
from mnemeta.algorithms.protocol import Predictor, embed_tasks
from mnemeta.checks import checked
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.errors import ConfigError, DataError
from mnemeta.registry import LEARNERS, BuildContext, EpisodicConfig, LearnerSpec


class BaselinePP(nn.Module):
    """Baseline++ over an encoder ``(N, *input_shape) -> (N, D)``.

    Args:
        encoder: the backbone f (Conv-4 on Omniglot in the paper).
        feature_dim: D, the encoder's output size.
        classes: C, the number of base classes the pre-training classifier covers (the classes
            of the training split; ``EpisodeBatch.classes`` indexes them).
        scale: s of the pre-training classifier.
        eval_scale: s of the new few-way head that :meth:`adapt` fine-tunes.
        finetune_steps: full-batch SGD steps of the new head on the support (0: imprinting only).
        finetune_lr, finetune_momentum, finetune_dampening, finetune_weight_decay: the SGD of the
            fine-tuning, with ``torch.optim.SGD``'s rule (see :func:`~mnemeta.algorithms.
            inner_optim.momentum`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        classes: int,
        *,
        scale: float = 10.0,
        eval_scale: float = 2.0,
        finetune_steps: int = 100,
        finetune_lr: float = 0.01,
        finetune_momentum: float = 0.9,
        finetune_dampening: float = 0.9,
        finetune_weight_decay: float = 0.001,
    ) -> None:
        super().__init__()
        problems = [
            f"{name}={value}"
            for name, value, ok in (
                ("classes", classes, classes > 0),
                ("feature_dim", feature_dim, feature_dim > 0),
                ("scale", scale, scale > 0),
                ("eval_scale", eval_scale, eval_scale > 0),
                ("finetune_steps", finetune_steps, finetune_steps >= 0),
                ("finetune_lr", finetune_lr, finetune_lr > 0),
                ("finetune_momentum", finetune_momentum, 0 <= finetune_momentum < 1),
                ("finetune_dampening", finetune_dampening, 0 <= finetune_dampening <= 1),
                ("finetune_weight_decay", finetune_weight_decay, finetune_weight_decay >= 0),
            )
            if not ok
        ]
        if problems:
            raise ConfigError(
                f"baseline_pp: {', '.join(problems)} out of range; need classes, feature_dim, "
                "scale, eval_scale, finetune_lr > 0, finetune_steps and finetune_weight_decay "
                ">= 0, 0 <= finetune_momentum < 1 and 0 <= finetune_dampening <= 1"
            )
        self.encoder = encoder
        self.feature_dim, self.classes = feature_dim, classes
        self.scale, self.eval_scale = scale, eval_scale
        self.finetune_steps = finetune_steps
        self.finetune_lr, self.finetune_momentum = finetune_lr, finetune_momentum
        self.finetune_dampening = finetune_dampening
        self.finetune_weight_decay = finetune_weight_decay
        # One weight vector per base class; only its direction matters (the logits normalise
        # it). nn.Linear's init, as the reference code's classifier before WeightNorm.
        self.classifier = nn.Linear(feature_dim, classes, bias=False)

    # ---- the protocol ----
    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Pre-training: every image of ``batch`` (support and query alike) classified over all
        C base classes. ``"loss"``: the mean cross-entropy over the ``T · (S + Q)`` images (each
        task has as many, so also the mean of per-task means); ``"accuracy"``: the fraction of
        them whose base class is the argmax — not a few-shot accuracy."""
        if batch.classes is None:
            raise DataError(
                "baseline_pp pre-trains a classifier over all base classes, so it needs to know "
                "which class of the split each episode label is, and this EpisodeBatch has no "
                "`classes`; sample it with mnemeta.data.sampler.EpisodeSampler (which fills it) "
                "or pass classes=(tasks, n_way) split class indices"
            )
        # Label j of task t is base class classes[t, j].
        targets = torch.cat(
            [batch.classes.gather(1, batch.support_y), batch.classes.gather(1, batch.query_y)],
            dim=1,
        ).flatten()
        # Support and query through the encoder together: one batch of BN statistics.
        z = embed_tasks(self.encoder, torch.cat([batch.support_x, batch.query_x], dim=1))
        logits = cosine_logits(z.flatten(0, 1), self.classifier.weight, self.scale)
        loss = nn.functional.cross_entropy(logits, targets)
        hits = (logits.detach().argmax(dim=-1) == targets).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": hits}

    def adapt(self, support: Support) -> Predictor:
        """Fine-tune a new cosine head per task on the frozen support features; the predictor
        maps queries ``(T, Q, *input_shape)`` to logits ``(T, Q, n_way)``."""
        features = embed_tasks(self.encoder, support.x).detach()  # (T, S, D)
        head = self._fine_tune(features, support.y, support.n_way).detach()  # (T, N, D)

        def predict(query_x: Tensor) -> Tensor:
            return cosine_logits(embed_tasks(self.encoder, query_x), head, self.eval_scale)

        return predict

    # ---- the fine-tuning ----
    def _fine_tune(self, features: Tensor, labels: Tensor, n_way: int) -> Tensor:
        """Support features ``(T, S, D)``, labels ``(T, S)`` -> head weights ``(T, N, D)``."""
        head = imprint(features, labels, n_way)
        if self.finetune_steps == 0:
            return head
        opt = momentum(
            self.finetune_lr,
            self.finetune_momentum,
            dampening=self.finetune_dampening,
            weight_decay=self.finetune_weight_decay,
        )
        # Evaluation runs under no_grad; the head is a fresh leaf, cut from everything else, so
        # the fine-tuning reaches no meta-parameter.
        with torch.enable_grad():
            params = {"head": head.requires_grad_()}
            state = opt.init(params)
            for _ in range(self.finetune_steps):
                logits = cosine_logits(features, params["head"], self.eval_scale)  # (T, S, N)
                # The sum over tasks of each task's mean loss: task t's gradient is its own.
                loss = (
                    nn.functional.cross_entropy(
                        logits.flatten(0, 1), labels.flatten(), reduction="none"
                    )
                    .view(labels.shape)
                    .mean(1)
                    .sum()
                )
                (grad,) = torch.autograd.grad(loss, params["head"])
                updates, state = opt.update({"head": grad}, state, params)
                params = apply_updates(params, updates)
        return params["head"]


def cosine_logits(features: Tensor, weights: Tensor, scale: float) -> Tensor:
    """``scale · cos(feature, weight)``: features ``(..., M, D)``, weights ``(..., C, D)`` (or
    ``(C, D)``) -> ``(..., M, C)``. Both are L2-normalised (``F.normalize``: a zero vector stays
    zero instead of dividing by 0; Chen et al. add 1e-5 to the feature norm instead)."""
    f = nn.functional.normalize(features, dim=-1)
    w = nn.functional.normalize(weights, dim=-1)
    return scale * (f @ w.transpose(-1, -2))


def imprint(features: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Weight imprinting (Qi et al. 2018): the L2-normalised mean of each class's L2-normalised
    features. ``(T, S, D)``, labels ``(T, S)`` -> ``(T, n_way, D)``."""
    f = nn.functional.normalize(features, dim=-1)
    onehot = nn.functional.one_hot(labels, n_way).to(f.dtype)  # (T, S, N)
    means = onehot.transpose(1, 2) @ f / onehot.sum(1).clamp_min(1).unsqueeze(-1)
    return nn.functional.normalize(means, dim=-1)


@dataclass
class BaselinePPConfig(EpisodicConfig):
    # Chen et al.'s scale for > 200 classes ("a larger scale factor is required to handle
    # > 1000 output classes"): cosines lie in [-1, 1], and a softmax over thousands of classes
    # needs logits spread far wider than that to be confident.
    scale: float = checked(10.0, gt=0)
    eval_scale: float = checked(
        2.0, gt=0
    )  # their scale for heads of <= 200 classes (the 5-way test heads)
    # Chen et al. fine-tune 100 epochs over the support; here one full-batch step per epoch.
    finetune_steps: int = checked(100, ge=1)
    # The rest: Chen et al.'s fine-tuning SGD (baselinefinetune.py).
    finetune_lr: float = checked(0.01, gt=0)
    finetune_momentum: float = checked(0.9, ge=0, lt=1)
    finetune_dampening: float = checked(0.9, ge=0, le=1)
    finetune_weight_decay: float = checked(0.001, ge=0)


def _build(cfg: BaselinePPConfig, ctx: BuildContext) -> BaselinePP:
    if ctx.classes <= 0:
        raise ConfigError(
            "model.algorithm=baseline_pp pre-trains a classifier over every class of "
            "train.split, but the number of those classes is unknown here (0); build it from "
            "the episodic recipe (mnemeta train), which passes the split's class count, or from "
            "a checkpoint that stores it"
        )
    # Running BN statistics for evaluation, as for the metric learners: the backbone is
    # frozen at test time and sees support and query separately.
    encoder = ctx.build_backbone(per_task_statistics=False)
    return BaselinePP(
        encoder,
        encoder.out_features(ctx.input_shape),
        ctx.classes,
        scale=cfg.scale,
        eval_scale=cfg.eval_scale,
        finetune_steps=cfg.finetune_steps,
        finetune_lr=cfg.finetune_lr,
        finetune_momentum=cfg.finetune_momentum,
        finetune_dampening=cfg.finetune_dampening,
        finetune_weight_decay=cfg.finetune_weight_decay,
    )


LEARNERS.register(
    LearnerSpec(
        "baseline_pp",
        BaselinePPConfig,
        "Baseline++: cosine classifier pre-trained on all base classes, new cosine head "
        "fine-tuned per support set (Chen et al. 2019)",
        build=_build,
    )
)
