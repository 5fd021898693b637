"""Episodes: the unit of data in meta-learning.

An *episode* is one N-way K-shot instance: a support set to learn from and a query set to be
scored on, with labels in ``[0, n_way)``. A *task* is what stands behind an episode (a set of
classes, a function); two episodes of the same task share classes but not drawings. The two
words are kept apart throughout mnemeta.

:class:`EpisodeBatch` carries a leading task dimension so that a meta-batch is one set of
tensors, not a Python list; algorithms vmap or batch over that dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.errors import DataError


@dataclass(frozen=True)
class Support:
    """The support sets of a batch of episodes: what a meta-learner adapts to.

    Attributes:
        x: ``(tasks, n_way * shots, *input_shape)``.
        y: int64 ``(tasks, n_way * shots)``, labels in ``[0, n_way)``.
        n_way: number of classes in each episode (kept as a Python int so that no one needs
            ``y.max()``, which would sync a GPU).
    """

    x: Tensor
    y: Tensor
    n_way: int


@dataclass(frozen=True)
class EpisodeBatch:
    """A meta-batch of episodes with a leading task dimension.

    Attributes:
        support_x: ``(tasks, n_way * shots, *input_shape)``.
        support_y: int64 ``(tasks, n_way * shots)``.
        query_x: ``(tasks, n_way * queries, *input_shape)``.
        query_y: int64 ``(tasks, n_way * queries)``.
        n_way: classes per episode (for regression, 0).
        classes: int64 ``(tasks, n_way)`` or None: which classes of the split the episode's
            labels are (label ``j`` of task ``t`` is class ``classes[t, j]``), for learners that
            train one classifier over all base classes (Baseline++); the sampler fills it.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    n_way: int
    classes: Tensor | None = None

    def __post_init__(self) -> None:
        t = self.support_x.shape[0]
        shapes_ok = (
            self.support_y.shape[:1] == (t,)
            and self.query_x.shape[0] == t
            and self.query_y.shape[:1] == (t,)
            and self.support_x.shape[1] == self.support_y.shape[1]
            and self.query_x.shape[1] == self.query_y.shape[1]
        )
        if not shapes_ok:
            raise DataError(
                "EpisodeBatch tensors disagree on the task or example dimension: support "
                f"{tuple(self.support_x.shape)}/{tuple(self.support_y.shape)}, query "
                f"{tuple(self.query_x.shape)}/{tuple(self.query_y.shape)}"
            )

    @property
    def n_tasks(self) -> int:
        return int(self.support_x.shape[0])

    @property
    def support(self) -> Support:
        return Support(self.support_x, self.support_y, self.n_way)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EpisodeBatch:
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return EpisodeBatch(
            move(self.support_x),
            move(self.support_y),
            move(self.query_x),
            move(self.query_y),
            self.n_way,
            None if self.classes is None else move(self.classes),
        )

    def task(self, i: int) -> EpisodeBatch:
        """Episode ``i`` alone, still with a task dimension of 1."""
        s = slice(i, i + 1)
        return EpisodeBatch(
            self.support_x[s],
            self.support_y[s],
            self.query_x[s],
            self.query_y[s],
            self.n_way,
            None if self.classes is None else self.classes[s],
        )
