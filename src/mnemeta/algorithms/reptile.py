"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

For each task of a meta-batch, k steps of Adam (β₁ = 0, as in the paper) on mini-batches of its
support set give adapted weights φᵢ; the meta-update is θ ← θ + ε (mean φᵢ − θ) (Algorithm 2).

To keep one training loop for every learner, :meth:`Reptile.meta_loss` returns the surrogate
``½‖θ − stopgrad(φ̄)‖²``, whose gradient is exactly ``θ − φ̄``: an outer SGD step with learning
rate ε on it *is* the Reptile update (``tests/algorithms/test_reptile.py`` checks the closed
form). Its presets use ``train.optimizer = "sgd"`` with ε annealed linearly to 0, as the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from mnemeta.algorithms.inner_loop import (
    LossFn,
    Params,
    cross_entropy,
    default_strategy,
    mse,
    over_tasks,
)
from mnemeta.algorithms.inner_optim import adam, apply_updates
from mnemeta.algorithms.maml import Classifier
from mnemeta.algorithms.protocol import Predictor, accuracy
from mnemeta.checks import checked
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.errors import ConfigError
from mnemeta.registry import LEARNERS, BuildContext, EpisodicConfig, LearnerSpec


class Reptile(nn.Module):
    """Reptile over any ``model`` that ``functional_call`` can run.

    Args:
        inner_lr: Adam step size of the inner loop (paper, Omniglot: 0.001).
        inner_steps / inner_batch: inner iterations and their mini-batch size (5 and 10).
        eval_inner_steps / eval_inner_batch: the same at test time (50 and 5).
        betas: inner Adam's (β₁, β₂); the paper sets β₁ = 0.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        task: str = "classification",
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        inner_batch: int = 10,
        eval_inner_steps: int = 50,
        eval_inner_batch: int = 5,
        betas: tuple[float, float] = (0.0, 0.999),
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        # The same checks, with the same messages, as MAML's: a learner is refused a bad
        # argument when it is built, not at its first meta_loss.
        if task not in ("classification", "regression"):
            raise ConfigError(f"task must be 'classification' or 'regression'; got {task!r}")
        if strategy not in ("auto", "vmap", "loop"):
            raise ConfigError(f"model.strategy={strategy!r} is unknown; choose auto, vmap or loop")
        if min(inner_steps, eval_inner_steps) < 0 or min(inner_batch, eval_inner_batch) < 1:
            raise ConfigError(
                f"need inner_steps, eval_inner_steps >= 0 and inner_batch, eval_inner_batch >= 1; "
                f"got {inner_steps}, {eval_inner_steps}, {inner_batch}, {eval_inner_batch}"
            )
        self.model, self.task = model, task
        self.inner_lr, self.inner_steps, self.inner_batch = inner_lr, inner_steps, inner_batch
        self.eval_inner_steps, self.eval_inner_batch = eval_inner_steps, eval_inner_batch
        self.betas, self.strategy = betas, strategy

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, Tensor]]:
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        order = _minibatch_order(
            batch.support_x.shape[:2], self.inner_steps, self.inner_batch, batch.support_x.device
        )

        def one(x: Tensor, y: Tensor, idx: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Params]:
            fast = self._inner(params, x, y, idx)
            out = functional_call(self.model, {**self._buffers_dict(), **fast}, (qx,))
            return self._loss_fn(out, qy), {"out": out, **fast}

        losses, results = over_tasks(
            one,
            (batch.support_x, batch.support_y, order, batch.query_x, batch.query_y),
            strategy=self._strategy(batch.support_x.device),
        )
        surrogate = sum(
            0.5 * (p - results[n].mean(dim=0).detach()).square().sum()
            for n, p in self.model.named_parameters()
        )
        assert isinstance(surrogate, Tensor)
        metrics = {"loss": losses.mean().detach()}
        if self.task == "classification":
            metrics["accuracy"] = accuracy(results["out"].detach(), batch.query_y).mean()
        return surrogate, metrics

    def skip_task_draws(self, n_tasks: int, support_size: int, *, adapting: bool = False) -> None:
        """Draw and drop the mini-batch orders ``meta_loss`` (``adapting``: ``adapt``) draws for
        ``n_tasks`` tasks (:class:`~mnemeta.algorithms.protocol.DrawsPerTask`: a meta-batch or an
        evaluation split over ranks)."""
        if n_tasks > 0:
            _minibatch_order(
                torch.Size([n_tasks, support_size]),
                self.eval_inner_steps if adapting else self.inner_steps,
                self.eval_inner_batch if adapting else self.inner_batch,
                torch.device("cpu"),
            )

    def adapt(self, support: Support) -> Predictor:
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        order = _minibatch_order(
            support.x.shape[:2], self.eval_inner_steps, self.eval_inner_batch, support.x.device
        )

        def predict(query_x: Tensor) -> Tensor:
            def one(x: Tensor, y: Tensor, idx: Tensor, qx: Tensor) -> tuple[Tensor, Tensor]:
                fast = self._inner(params, x, y, idx)
                out = functional_call(self.model, {**self._buffers_dict(), **fast}, (qx,))
                return out, out

            _, out = over_tasks(
                one,
                (support.x, support.y, order, query_x),
                strategy=self._strategy(support.x.device),
            )
            return out

        return predict

    def _inner(self, params: Params, x: Tensor, y: Tensor, order: Tensor) -> Params:
        """Adam, one step per row of ``order`` on the mini-batch ``x[order[j]]``."""
        buffers = self._buffers_dict()

        def loss(p: Params, bx: Tensor, by: Tensor) -> Tensor:
            return self._loss_fn(functional_call(self.model, {**buffers, **p}, (bx,)), by)

        opt = adam(self.inner_lr, *self.betas)
        fast, state = params, opt.init(params)
        for j in range(order.shape[0]):
            idx = order[j]
            updates, state = opt.update(grad(loss)(fast, x[idx], y[idx]), state, fast)
            fast = apply_updates(fast, updates)
        return fast

    def _buffers_dict(self) -> Params:
        return dict(self.model.named_buffers())

    def _strategy(self, device: torch.device) -> str:
        return default_strategy(device) if self.strategy == "auto" else self.strategy

    @property
    def _loss_fn(self) -> LossFn:
        return cross_entropy if self.task == "classification" else mse


def _minibatch_order(shape: torch.Size, steps: int, size: int, device: torch.device) -> Tensor:
    """Per task, ``steps`` mini-batches of support indices: shuffled epochs over the support set.

    Drawn here from the global RNG (outside vmap) so that the loop and vmap strategies see the
    same mini-batches. Returns int64 ``(tasks, steps, min(size, support size))``.
    """
    tasks, n = int(shape[0]), int(shape[1])
    size = min(size, n)
    epochs = -(-steps * size // n)
    perms = torch.stack(
        [
            torch.cat([torch.randperm(n) for _ in range(epochs)])[: steps * size]
            for _ in range(tasks)
        ]
    )
    return perms.view(tasks, steps, size).to(device)


@dataclass
class ReptileConfig(EpisodicConfig):
    inner_lr: float = checked(
        1e-3, gt=0
    )  # the inner Adam's step size (Nichol et al., Omniglot: 0.001)
    inner_steps: int = checked(
        5, ge=1
    )  # inner Adam iterations per task in meta-training (paper: 5)
    inner_batch: int = checked(10, ge=1)  # their mini-batch size (paper: 10)
    eval_inner_steps: int | None = checked(
        None, ge=1
    )  # at test time (paper: 50); None: as in training
    eval_inner_batch: int = checked(5, ge=1)  # mini-batch size at test time (paper: 5)
    strategy: str = checked(
        "auto", choices=("auto", "vmap", "loop")
    )  # vmap over tasks on a GPU, a loop on a CPU | vmap | loop


def _build(cfg: ReptileConfig, ctx: BuildContext) -> Reptile:
    encoder = ctx.build_backbone(per_task_statistics=True)
    return Reptile(
        Classifier(encoder, encoder.out_features(ctx.input_shape), ctx.outputs),
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        inner_batch=cfg.inner_batch,
        eval_inner_steps=cfg.inner_steps if cfg.eval_inner_steps is None else cfg.eval_inner_steps,
        eval_inner_batch=cfg.eval_inner_batch,
        strategy=cfg.strategy,
    )


LEARNERS.register(
    LearnerSpec(
        "reptile",
        ReptileConfig,
        "Reptile: move towards each task's Adam-adapted weights (Nichol et al. 2018)",
        build=_build,
        fixed_ways=True,
    )
)
