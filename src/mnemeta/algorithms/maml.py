"""MAML and its family on one functional inner loop: MAML (Finn, Abbeel & Levine 2017),
first-order MAML, Meta-SGD (Li et al. 2017) and ANIL (Raghu et al. 2020).

All four are :class:`MAML` with different switches:

==============  ==============================================================
MAML            all weights adapted, meta-gradient through the inner updates
first-order     ``first_order=True``: inner gradients detached (eq. of §2.2)
Meta-SGD        ``learn_inner_lr=True``: a learned step size per weight, α ⊙ ∇
ANIL            ``adapt=("head.",)``: only the head is adapted, the body is shared
==============  ==============================================================

Batch norm follows the MAML paper: statistics of the current batch, per task (the model's
:class:`~mnemeta.nn.BatchNorm` layers are built with ``track_running_stats=False``, primitive
ops, so that their second-order gradient under vmap is right).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mnemeta.algorithms.inner_loop import (
    LossFn,
    Params,
    cross_entropy,
    default_strategy,
    inner_adapt,
    mse,
    over_tasks,
)
from mnemeta.algorithms.protocol import Predictor, accuracy
from mnemeta.checks import checked
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.errors import ConfigError
from mnemeta.registry import LEARNERS, BuildContext, EpisodicConfig, LearnerSpec


class MAML(nn.Module):
    """Model-agnostic meta-learning over any ``model`` that ``functional_call`` can run.

    Args:
        model: maps ``(N, *input_shape)`` to ``(N, n_way)`` logits or ``(N, out)`` regressions.
        task: ``"classification"`` (cross-entropy, accuracy) or ``"regression"`` (MSE).
        inner_lr: α, the inner SGD step size (Meta-SGD: the initial value of every α).
        inner_steps: inner steps during meta-training.
        eval_inner_steps / eval_inner_lr: the same at test time (MAML tests Omniglot 5-way with
            3 steps after training with 1); ``None`` means as in training.
        first_order: drop the second-order terms of the meta-gradient.
        learn_inner_lr: Meta-SGD, a learned step size per weight.
        adapt: name prefixes of the parameters adapted in the inner loop; ``None`` adapts all
            (MAML), ``("head.",)`` only a head called ``head`` (ANIL).
        strategy: ``"vmap"``, ``"loop"``, or ``"auto"`` (vmap on a GPU, a loop on a CPU).
        task_chunk: tasks per vmap call (0: the whole meta-batch), to bound GPU memory.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        task: str = "classification",
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        eval_inner_lr: float | None = None,
        first_order: bool = False,
        learn_inner_lr: bool = False,
        adapt: Sequence[str] | None = None,
        strategy: str = "auto",
        task_chunk: int = 0,
    ) -> None:
        super().__init__()
        if task not in ("classification", "regression"):
            raise ConfigError(f"task must be 'classification' or 'regression'; got {task!r}")
        if strategy not in ("auto", "vmap", "loop"):
            raise ConfigError(f"model.strategy={strategy!r} is unknown; choose auto, vmap or loop")
        steps = (inner_steps, inner_steps if eval_inner_steps is None else eval_inner_steps)
        if min(steps) < 0 or task_chunk < 0:
            raise ConfigError(
                f"need inner_steps, eval_inner_steps >= 0 and task_chunk >= 0; got "
                f"{steps[0]}, {steps[1]}, {task_chunk}"
            )
        self.model = model
        self.task = task
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.eval_inner_lr = inner_lr if eval_inner_lr is None else eval_inner_lr
        self.first_order, self.learn_inner_lr = first_order, learn_inner_lr
        self.adapt_prefixes = tuple(adapt) if adapt is not None else None
        self.strategy, self.task_chunk = strategy, task_chunk
        names = [n for n, _ in model.named_parameters() if self._adapted(n)]
        if not names:
            raise ConfigError(f"no parameter of the model starts with {self.adapt_prefixes}")
        if learn_inner_lr:
            # Meta-SGD: α has the shape of the weight it scales; ParameterDict keys may not
            # contain dots.
            self.inner_lrs = nn.ParameterDict(
                {
                    _key(n): nn.Parameter(torch.full_like(p, inner_lr))
                    for n, p in model.named_parameters()
                    if self._adapted(n)
                }
            )

    # ---- the protocol ----
    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, Tensor]]:
        losses, outputs = self._query_losses(
            batch.support_x,
            batch.support_y,
            batch.query_x,
            batch.query_y,
            steps=self.inner_steps,
            lr=self.inner_step_sizes(training=True),
        )
        loss = losses.mean()
        metrics = {"loss": loss.detach()}
        if self.task == "classification":
            metrics["accuracy"] = accuracy(outputs.detach(), batch.query_y).mean()
        return loss, metrics

    def adapt(self, support: Support) -> Predictor:
        """Fast weights for each task of ``support``; the predictor runs the adapted model.

        Gradients are needed for the inner loop even under ``torch.no_grad()`` (evaluation):
        ``torch.func.grad`` ignores an outer ``no_grad``, and nothing here touches the
        meta-parameters.
        """
        lr = self.inner_step_sizes(training=False)
        params, fixed = self.split_params()
        strategy = self._strategy(support.x.device)

        def adapt_one(x: Tensor, y: Tensor) -> Params:
            return inner_adapt(
                self.model,
                params,
                fixed,
                x,
                y,
                loss_fn=self.loss_fn,
                steps=self.eval_inner_steps,
                lr=lr,
                first_order=True,
            )

        def predict(query_x: Tensor) -> Tensor:
            def one(x: Tensor, y: Tensor, qx: Tensor) -> tuple[Tensor, Tensor]:
                fast = {k: w.detach() for k, w in adapt_one(x, y).items()}
                out = functional_call(self.model, {**fixed, **fast}, (qx,))
                return out, out

            _, outputs = over_tasks(
                one, (support.x, support.y, query_x), strategy=strategy, chunk=self.task_chunk
            )
            return outputs

        return predict

    # ---- internals ----
    def _query_losses(
        self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, *, steps: int, lr: float | Params
    ) -> tuple[Tensor, Tensor]:
        params, fixed = self.split_params()

        def one(x: Tensor, y: Tensor, q_x: Tensor, q_y: Tensor) -> tuple[Tensor, Tensor]:
            fast = inner_adapt(
                self.model,
                params,
                fixed,
                x,
                y,
                loss_fn=self.loss_fn,
                steps=steps,
                lr=lr,
                first_order=self.first_order,
            )
            out = functional_call(self.model, {**fixed, **fast}, (q_x,))
            return self.loss_fn(out, q_y), out

        return over_tasks(
            one, (sx, sy, qx, qy), strategy=self._strategy(sx.device), chunk=self.task_chunk
        )

    def split_params(self) -> tuple[Params, Params]:
        """(the weights adapted in the inner loop, everything else the model needs)."""
        adapted: Params = {}
        fixed: Params = dict(self.model.named_buffers())
        for name, p in self.model.named_parameters():
            (adapted if self._adapted(name) else fixed)[name] = p
        return adapted, fixed

    def _adapted(self, name: str) -> bool:
        return self.adapt_prefixes is None or name.startswith(self.adapt_prefixes)

    def inner_step_sizes(self, *, training: bool) -> float | Params:
        """α: one number, or (Meta-SGD) a learned tensor per adapted weight."""
        if self.learn_inner_lr:
            return {
                n: self.inner_lrs[_key(n)]
                for n, _ in self.model.named_parameters()
                if self._adapted(n)
            }
        return self.inner_lr if training else self.eval_inner_lr

    def _strategy(self, device: torch.device) -> str:
        return default_strategy(device) if self.strategy == "auto" else self.strategy

    @property
    def loss_fn(self) -> LossFn:
        return cross_entropy if self.task == "classification" else mse


def _key(name: str) -> str:
    return name.replace(".", "__")


class Classifier(nn.Module):
    """``encoder`` then a linear ``head``: the network MAML adapts (ANIL adapts only ``head``)."""

    def __init__(self, encoder: nn.Module, features: int, n_way: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(features, n_way)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


@dataclass
class MAMLConfig(EpisodicConfig):
    inner_lr: float = checked(
        0.4, gt=0
    )  # α: Finn et al.'s Omniglot 5-way value (Meta-SGD: every α's start)
    inner_steps: int = checked(
        1, ge=1
    )  # inner steps in meta-training (Omniglot 5-way: 1; 20-way: 5)
    eval_inner_steps: int | None = checked(
        None, ge=0
    )  # inner steps at test time; None: as in training
    eval_inner_lr: float | None = checked(None, gt=0)  # α at test time; None: as in training
    strategy: str = checked(
        "auto", choices=("auto", "vmap", "loop")
    )  # vmap over tasks on a GPU, a loop on a CPU | vmap | loop
    task_chunk: int | None = checked(
        None, ge=1
    )  # tasks per vmap call, to bound GPU memory; None: all


def _family(**switches: Any) -> Any:
    def build(cfg: MAMLConfig, ctx: BuildContext) -> MAML:
        # Batch statistics of each task (the MAML paper), no running statistics.
        encoder = ctx.build_backbone(per_task_statistics=True)
        return MAML(
            Classifier(encoder, encoder.out_features(ctx.input_shape), ctx.outputs),
            inner_lr=cfg.inner_lr,
            inner_steps=cfg.inner_steps,
            eval_inner_steps=cfg.eval_inner_steps,
            eval_inner_lr=cfg.eval_inner_lr,
            strategy=cfg.strategy,
            task_chunk=cfg.task_chunk or 0,
            **switches,
        )

    return build


for _name, _summary, _switches in (
    ("maml", "MAML, second order (Finn, Abbeel & Levine 2017)", {}),
    ("fomaml", "first-order MAML: inner gradients detached", {"first_order": True}),
    (
        "metasgd",
        "Meta-SGD: a learned step size per weight (Li et al. 2017)",
        {"learn_inner_lr": True},
    ),
    ("anil", "ANIL: MAML adapting only the head (Raghu et al. 2020)", {"adapt": ("head.",)}),
):
    LEARNERS.register(
        LearnerSpec(_name, MAMLConfig, _summary, build=_family(**_switches), fixed_ways=True)
    )
