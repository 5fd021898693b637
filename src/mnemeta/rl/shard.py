"""A process's share of a meta-batch of tasks: meta-RL over several processes (``torchrun``).

Under torchrun, rank ``r`` runs tasks ``[lo, hi)`` of each meta-batch of ``total`` (its
:class:`TaskShard`), and two rules make the run equal to one process's on the same tasks, up to
the order of floating-point sums:

1. **Every random draw is made for the whole batch.** An iteration's generator draws the tasks,
   the initial states and every step's action noise for all ``total`` tasks, on every rank, and
   the rank keeps its rows (:func:`normal`, :func:`integers`). So the generators stay in step
   across ranks, each task sees the noise it would see in one process, and a checkpoint is every
   rank's state. (The draws are a few numbers per step; the simulation and the networks, which
   are sharded, are the cost.)
2. **Every mean over the batch is a sum of the ranks' parts**, each divided by the *batch's*
   denominator (its tasks, or its visited states), then summed over the ranks by
   :attr:`TaskShard.sum_over_ranks`, an all-reduce (:func:`share_of_mean`, :func:`total`).
   Means of differentiable losses are summed after differentiation: the ranks' gradients and
   Fisher-vector products are summed (:func:`sum_gradients`), which is the gradient of the sum.

``shard=None``, everywhere it is accepted, is one process running the whole batch, and runs the
exact operations it ran before sharding existed (bit for bit). The recipe builds a shard from
:class:`mnemeta.recipes.distributed.Ranks`; this module needs no process group, so it is tested
with a stand-in ``sum_over_ranks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.errors import ConfigError


@dataclass(frozen=True)
class TaskShard:
    """Rows ``[lo, hi)`` of a meta-batch of ``total`` tasks, and how to sum over the ranks.

    Attributes:
        sum_over_ranks: ``Σ_r value_r`` of a detached tensor, the same on every rank (an
            all-reduce); it must be called by every rank in the same order.
    """

    lo: int
    hi: int
    total: int
    sum_over_ranks: Callable[[Tensor], Tensor]

    def __post_init__(self) -> None:
        if not 0 <= self.lo < self.hi <= self.total:
            raise ConfigError(
                f"a task shard needs 0 <= lo < hi <= total; got [{self.lo}, {self.hi}) of "
                f"{self.total}: every rank needs at least one task (a meta-batch of at least "
                "the world size)"
            )

    @property
    def size(self) -> int:
        return self.hi - self.lo

    @property
    def rows(self) -> slice:
        return slice(self.lo, self.hi)

    def part(self, whole: Tensor) -> Tensor:
        """This shard's rows of a tensor over the whole batch, ``(total, ...)``."""
        if whole.shape[0] != self.total:
            raise ConfigError(
                f"expected {self.total} rows (the meta-batch) to shard; got {whole.shape[0]}"
            )
        return whole[self.rows]


def normal(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
    shard: TaskShard | None = None,
) -> Tensor:
    """``ε ~ N(0, I)`` of ``shape``, ``(tasks, ...)``, for this shard's tasks: drawn for the
    whole batch ``(total, ...)`` and this shard's rows kept (rule 1 of the module)."""
    if shard is None:
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if shape[0] != shard.size:
        raise ConfigError(f"noise for {shape[0]} tasks, but the shard has {shard.size}")
    whole = torch.randn((shard.total, *shape[1:]), generator=generator, device=device, dtype=dtype)
    return whole[shard.rows]


def integers(
    high: int,
    *,
    tasks: int,
    per_task: int,
    generator: torch.Generator | None,
    shard: TaskShard | None = None,
) -> Tensor:
    """``tasks · per_task`` integers in ``[0, high)``, task-major (e.g. a reset seed per
    sub-environment), for this shard's tasks: drawn for the whole batch, this shard's kept."""
    device = generator.device if generator is not None else None
    if shard is None:
        return torch.randint(0, high, (tasks * per_task,), generator=generator, device=device)
    if tasks != shard.size:
        raise ConfigError(f"draws for {tasks} tasks, but the shard has {shard.size}")
    whole = torch.randint(0, high, (shard.total * per_task,), generator=generator, device=device)
    return whole[shard.lo * per_task : shard.hi * per_task]


def total(value: Tensor, shard: TaskShard | None) -> Tensor:
    """``Σ_r value_r`` over the ranks (``value`` itself in one process): the batch's sum of a
    quantity each rank summed over its own tasks, e.g. the visited states ``Σ mask``."""
    return value if shard is None else shard.sum_over_ranks(value.detach())


def share_of_mean(values: Tensor, shard: TaskShard | None) -> Tensor:
    """This shard's part of the mean over the whole batch of ``values`` ``(tasks, ...)``:
    ``Σ values / (total · per-task count)``, differentiable; summed over the ranks it is the
    batch mean. In one process, ``values.mean()``."""
    if shard is None:
        return values.mean()
    return values.sum() / (shard.total * values[0].numel())


def batch_mean(values: Tensor, shard: TaskShard | None) -> Tensor:
    """The mean over the whole batch of ``values`` ``(tasks, ...)``, detached, on every rank."""
    return total(share_of_mean(values.detach(), shard), shard)


def sum_gradients(
    params: Sequence[Tensor], shard: TaskShard | None, extras: Sequence[Tensor] = ()
) -> list[Tensor]:
    """Replace every ``p.grad`` by its sum over the ranks (one all-reduce, ``extras`` — scalar
    metrics — carried in the same buffer); returns the summed extras. A tensor without a
    gradient counts as zero on that rank. In one process nothing changes."""
    if shard is None:
        return [e.detach() for e in extras]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat(
        [g.reshape(-1) for g in grads] + [e.detach().reshape(1).to(grads[0].dtype) for e in extras]
    )
    flat = shard.sum_over_ranks(flat)
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at : at + n].view_as(p).clone()
        at += n
    return list(flat[at:])
