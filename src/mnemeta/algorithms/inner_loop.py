"""The one functional inner loop that the optimisation-based learners share.

A model is called as a pure function of a dict of tensors (``torch.func.functional_call``); the
inner loop takes ``torch.func.grad`` of the support loss and steps the *fast weights* with the
one inner optimiser (:mod:`~mnemeta.algorithms.inner_optim`), leaving the meta-parameters
untouched. Whether the meta-gradient flows through the inner updates (second-order MAML) or not
(first-order) is one flag: the inner gradient is detached or kept.

The same per-task function runs either under ``torch.func.vmap`` over the tasks of a
meta-batch (one batched computation: fast on a GPU) or in a Python loop over tasks (faster on
a CPU, where vmap's batched convolutions lose to plain ones). Both give the same numbers;
``tests/algorithms/test_maml.py`` checks this in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mnemeta.algorithms.inner_optim import Params as Params  # re-exported: learners import it here
from mnemeta.algorithms.inner_optim import apply_updates, chain, memory_pull, sgd
from mnemeta.errors import ConfigError
from mnemeta.nn.vmap import under_vmap

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits, y)


def mse(prediction: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(prediction, y)


class MemoryPull(NamedTuple):
    """The memory-weighted term of an inner step, ``β Σᵢ ωᵢ (θᵢ − θ)``.

    With weights ``ωᵢ = softmax(similarityᵢ / τ)`` over retrieved tasks, which sum to one, the
    term equals ``β (θ̄ − θ)`` with ``θ̄ = Σᵢ ωᵢ θᵢ``; ``anchor`` holds ``θ̄``. Tensors of the
    adapted ``params`` missing from ``anchor`` are not pulled. :func:`inner_adapt` chains
    :func:`~mnemeta.algorithms.inner_optim.memory_pull` with these onto its SGD step.
    """

    anchor: Params
    beta: float


def inner_adapt(
    model: nn.Module,
    params: Params,
    fixed: Params,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
    lr: float | Params,
    first_order: bool,
    pull: MemoryPull | None = None,
) -> Params:
    """``steps`` SGD steps on ``params`` for one task's support ``(x, y)``.

    Args:
        model: the network; called as ``functional_call(model, {**fixed, **params}, x)``.
        params: the tensors adapted in the inner loop (all weights for MAML, the head for ANIL).
        fixed: everything else the model needs (the body for ANIL, buffers).
        lr: one step size, or one per tensor of ``params`` (Meta-SGD's learned α, same shapes).
        first_order: detach the inner gradient, so the meta-gradient ignores second-order terms.
        pull: a memory of past tasks pulling the fast weights towards their adapted weights:
            each step is ``θ ← θ − α∇L(θ) + β Σᵢ ωᵢ (θᵢ − θ)``, both terms taken at the same θ.

    Returns the fast weights, ``params`` after the steps (a new dict; nothing is mutated).
    The steps are :func:`~mnemeta.algorithms.inner_optim.sgd`, chained with
    :func:`~mnemeta.algorithms.inner_optim.memory_pull` when ``pull`` is given.
    """
    opt = sgd(lr)
    if pull is not None:
        opt = chain(opt, memory_pull(pull.anchor, pull.beta))

    def support_loss(p: Params) -> Tensor:
        return loss_fn(functional_call(model, {**fixed, **p}, (x,)), y)

    # Outside vmap (the per-task loop), torch.autograd.grad does the same job with less
    # overhead than torch.func.grad (~10% per task on a CPU, measured by
    # benchmarks/speed_maml.py); under vmap only torch.func.grad applies.
    batched = under_vmap(x)
    fast, state = params, opt.init(params)
    for _ in range(steps):
        if batched:
            grads = grad(support_loss)(fast)
        else:
            grads = _autograd_grads(support_loss, fast, create_graph=not first_order)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        updates, state = opt.update(grads, state, fast)
        fast = apply_updates(fast, updates)
    return fast


def _autograd_grads(
    loss_fn: Callable[[Params], Tensor], params: Params, *, create_graph: bool
) -> Params:
    """``torch.func.grad(loss_fn)(params)`` by reverse-mode autograd, also under ``no_grad``."""
    with torch.enable_grad():
        leaves = {
            k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()
        }
        loss = loss_fn(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)
    return dict(zip(leaves, grads, strict=True))


def over_tasks(
    per_task: Callable[..., tuple[Tensor, Any]],
    tasks: Iterable[Tensor],
    *,
    strategy: str,
    chunk: int = 0,
) -> tuple[Tensor, Any]:
    """Run ``per_task(*task_tensors) -> (loss, output)`` on every task; stack the results.

    ``output`` is a tensor or a dict of tensors. ``strategy`` is ``"vmap"`` (one batched
    computation, in chunks of ``chunk`` tasks when ``chunk`` > 0, to bound memory) or
    ``"loop"`` (one task at a time).
    """
    tensors = list(tasks)
    n = tensors[0].shape[0]
    if strategy == "loop":
        results = [per_task(*(t[i] for t in tensors)) for i in range(n)]
        return _join(torch.stack, [r[0] for r in results]), _join(
            torch.stack, [r[1] for r in results]
        )
    if strategy != "vmap":
        raise ConfigError(f"strategy must be 'vmap' or 'loop'; got {strategy!r}")
    batched = vmap(per_task, randomness="different")
    size = chunk if chunk > 0 else n
    parts = [batched(*(t[i : i + size] for t in tensors)) for i in range(0, n, size)]
    return _join(torch.cat, [p[0] for p in parts]), _join(torch.cat, [p[1] for p in parts])


def _join(op: Callable[[list[Tensor]], Tensor], items: list[Any]) -> Any:
    """``op`` (stack or cat) over a list of tensors, or key by key over a list of dicts."""
    if isinstance(items[0], dict):
        return {k: op([item[k] for item in items]) for k in items[0]}
    return op(items)


def default_strategy(device: torch.device) -> str:
    """vmap on accelerators; a loop over tasks on a CPU, where batched convolutions lose to
    plain ones (2.5x on the 2-core CI machine; benchmarks/results/speed_maml.md)."""
    return "loop" if device.type == "cpu" else "vmap"
