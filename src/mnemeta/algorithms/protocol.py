"""What every meta-learner in mnemeta offers: a loss to meta-train on, and ``adapt``.

A *protocol*, not a base class: a meta-learner is any ``nn.Module`` with these two methods.
Hyper-parameters are set in ``__init__``; ``adapt`` never changes the meta-parameters (the
contract suite in ``tests/algorithms/test_contract.py`` checks this for every learner).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor

from mnemeta.episode import EpisodeBatch, Support

#: Maps query inputs ``(tasks, n_query, *input_shape)`` to logits ``(tasks, n_query, n_way)``.
Predictor = Callable[[Tensor], Tensor]


@runtime_checkable
class MetaLearner(Protocol):
    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise over the meta-parameters, and detached metrics: ``"loss"``, the
        mean query loss over the tasks of ``batch``, and for classification ``"accuracy"``.

        For most learners the two losses are the same; Reptile returns a surrogate whose
        gradient is its meta-update."""
        ...

    def adapt(self, support: Support) -> Predictor:
        """Learn the tasks of ``support``; return a predictor for their queries."""
        ...


@runtime_checkable
class DrawsPerTask(Protocol):
    """A learner whose ``meta_loss`` draws from the global RNG, task after task (Reptile's
    mini-batch orders, in training and in ``adapt``). When a meta-batch or an evaluation is
    split over processes, each process skips the draws of the tasks before and after its own,
    so that its tasks get the draws they get in one process and every process's RNG ends where
    one process's does."""

    def skip_task_draws(self, n_tasks: int, support_size: int, *, adapting: bool = False) -> None:
        """Draw and drop what ``meta_loss`` (``adapting``: ``adapt``) draws for ``n_tasks``
        tasks of ``support_size`` support examples each."""
        ...


def embed_tasks(encoder: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``(tasks, n, *input_shape)`` -> ``(tasks, n, D)``: one encoder call for all tasks."""
    t, n = x.shape[:2]
    return encoder(x.reshape(t * n, *x.shape[2:])).reshape(t, n, -1)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct argmax predictions per task: ``(tasks, Q, n_way)`` -> ``(tasks,)``."""
    return (logits.argmax(dim=-1) == labels).float().mean(dim=-1)
