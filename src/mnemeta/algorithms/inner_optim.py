"""The one inner optimiser: pure ``(init, update)`` pairs over dicts of tensors, as in optax.

Every inner loop in mnemeta (MAML and its family, Reptile, the Meta Memory Network's output
layer, the sinusoid recipe's fine-tuning, Baseline++'s new head) is a few lines over an
:class:`InnerOptimizer`::

    opt = chain(sgd(alpha), memory_pull(anchor, beta))
    state = opt.init(params)
    for _ in range(steps):
        grads = ...                      # ∇L(θ), a dict with the keys of params
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)

``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)`` are pure:
nothing is mutated, and the state holds only tensors (in tuples, NamedTuples and dicts), never
a Python number that changes from step to step. So the same loop runs under
``torch.func.vmap`` (each task its own state), inside ``torch.func.grad`` / autograd (a learned
step size such as Meta-SGD's α receives its gradient through ``update``) and under
``torch.compile``.

Two departures from optax, both so that every learner's step rounds exactly as the
hand-written step it replaces (and as the papers write it):

- an update is a *descent step*, subtracted: ``θ ← θ − u`` (optax adds ``u``). SGD's update is
  ``α ⊙ ∇L``, so the step is the familiar ``θ − α∇L``;
- ``updates`` is a tuple of terms, one per transform of a :func:`chain`, subtracted from θ in
  order. ``chain(sgd(α), memory_pull(θ̄, β))`` steps ``(θ − α∇L(θ)) − β(θ − θ̄)``; folding the
  terms into one update first, ``θ − (α∇L(θ) + β(θ − θ̄))``, rounds differently.

Shapes: ``params``, ``grads`` and every term of ``updates`` are dicts name -> tensor of one
shape per name (a term may hold a subset of the names: the others are not moved). Under vmap
each of them carries the task dimension; the optimiser never looks at it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mnemeta.errors import ConfigError

Params = dict[str, Tensor]
Updates = tuple[Params, ...]
"""The terms of one step, each subtracted from the weights in order by :func:`apply_updates`."""
State = Any
"""A pytree of tensors (tuples, NamedTuples, dicts); each transform defines its own."""


class InnerOptimizer(NamedTuple):
    """Two pure functions: ``init(params) -> state``, ``update(grads, state, params) ->
    (updates, state)``. ``update`` sees the gradient and the weights at the same θ."""

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Updates, State]]


def apply_updates(params: Params, updates: Updates) -> Params:
    """``θ ← θ − u₁ − u₂ − …``, term by term in order (a new dict; nothing is mutated).

    A tensor missing from a term is left as it is by that term.
    """
    for term in updates:
        params = {k: w - term[k] if k in term else w for k, w in params.items()}
    return params


def sgd(lr: float | Tensor | Params) -> InnerOptimizer:
    """Gradient descent, ``θ ← θ − α ⊙ ∇L(θ)``.

    Args:
        lr: α. A number; or one tensor per weight (Meta-SGD, Li et al. 2017: a learned α of the
            weight's shape, or any shape that broadcasts against it, e.g. the Meta Memory
            Network's per-feature ``(D,)`` over ``(T, N, D)`` weights). A tensor α stays in the
            autograd graph, so the meta-loss differentiates through it.

    State: ``()``. Update: ``(α ⊙ g,)``.
    """

    def init(params: Params) -> State:
        if isinstance(lr, dict):
            missing = sorted(set(params) - set(lr))
            if missing:
                raise ConfigError(
                    f"sgd: no step size for {missing}; the per-tensor lr needs one entry for "
                    f"every adapted weight (it has {sorted(lr)})"
                )
        return ()

    def update(grads: Params, state: State, params: Params) -> tuple[Updates, State]:
        del params
        return ({k: _per_tensor(lr, k) * g for k, g in grads.items()},), state

    return InnerOptimizer(init, update)


class AdamState(NamedTuple):
    """Adam's state. ``steps``: t, the steps taken so far, a float64 0-dim tensor on the CPU;
    ``mu`` and ``nu``: the moment estimates m and v, one tensor per weight, of its shape."""

    steps: Tensor
    mu: Params
    nu: Params


def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> InnerOptimizer:
    """Adam (Kingma & Ba 2015, Algorithm 1), with its bias correction. At step t = 1, 2, …::

        m ← β₁ m + (1 − β₁) g          v ← β₂ v + (1 − β₂) g²
        m̂ = m / (1 − β₁ᵗ)              v̂ = v / (1 − β₂ᵗ)
        θ ← θ − α m̂ / (√v̂ + ε)

    Reptile's inner loop uses β₁ = 0 (Nichol et al. 2018), which makes m̂ = g.

    State: :class:`AdamState`. The step count is a tensor, not a Python int, so that the state
    is pure; it is float64 on the CPU so that ``1 − βᵗ`` is computed as Python computes it
    (float64, libm's ``pow``) and enters each kernel as a CPU scalar, as a Python number would,
    also for weights on a GPU. Update: ``(α m̂ / (√v̂ + ε),)``.
    """

    def init(params: Params) -> State:
        return AdamState(
            torch.zeros((), dtype=torch.float64, device="cpu"),
            {k: torch.zeros_like(w) for k, w in params.items()},
            {k: torch.zeros_like(w) for k, w in params.items()},
        )

    def update(grads: Params, state: State, params: Params) -> tuple[Updates, State]:
        del params
        t = state.steps + 1
        # The operations in the order of Algorithm 1 (and of Reptile's former hand-written
        # loop, so that its numbers did not move by one bit).
        correction1, correction2 = 1 - b1**t, 1 - b2**t
        mu = {k: b1 * state.mu[k] + (1 - b1) * g for k, g in grads.items()}
        nu = {k: b2 * state.nu[k] + (1 - b2) * g.square() for k, g in grads.items()}
        step = {}
        for k in grads:
            m_hat = mu[k] / correction1
            v_hat = nu[k] / correction2
            step[k] = lr * m_hat / (v_hat.sqrt() + eps)
        return (step,), AdamState(t, mu, nu)

    return InnerOptimizer(init, update)


class MomentumState(NamedTuple):
    """The heavy-ball state. ``steps``: the steps taken so far, a float64 0-dim tensor on the
    CPU (as Adam's); ``velocity``: the buffer b, one tensor per weight, of its shape."""

    steps: Tensor
    velocity: Params


def momentum(
    lr: float, beta: float, *, dampening: float = 0.0, weight_decay: float = 0.0
) -> InnerOptimizer:
    """SGD with momentum and L2 weight decay, the rule of ``torch.optim.SGD``. At step t::

        d = g + λ θ                                   (λ: weight_decay)
        b ← d                        at t = 1
        b ← μ b + (1 − τ) d          at t > 1         (μ: beta, τ: dampening)
        θ ← θ − α b

    The first step takes the whole ``d``, undamped, as PyTorch does: Chen et al. (2019) fine-tune
    Baseline++'s head with ``SGD(lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)``,
    whose first step is therefore ten times a later step's share of the same gradient. The
    decay is *coupled* (it enters the momentum), unlike :func:`weight_decay` chained on.

    State: :class:`MomentumState` (the step count is a tensor so that the first step is chosen
    without a Python branch on the state). Update: ``(α b,)``.
    """

    def init(params: Params) -> State:
        return MomentumState(
            torch.zeros((), dtype=torch.float64, device="cpu"),
            {k: torch.zeros_like(w) for k, w in params.items()},
        )

    def update(grads: Params, state: State, params: Params) -> tuple[Updates, State]:
        # later = 0 at t = 1, else 1 (a float64 tensor, exact): the buffer is then 0, so
        # 0·b + 1·d is d exactly; afterwards μ b + (1 − τ) d.
        later = (state.steps > 0).to(torch.float64)
        keep = beta * later
        take = 1 - later + (1.0 - dampening) * later
        velocity = {}
        for k, g in grads.items():
            d = g + weight_decay * params[k] if weight_decay else g
            velocity[k] = keep * state.velocity[k] + take * d
        step = {k: lr * b for k, b in velocity.items()}
        return (step,), MomentumState(state.steps + 1, velocity)

    return InnerOptimizer(init, update)


def weight_decay(rate: float | Tensor) -> InnerOptimizer:
    """Decoupled weight decay, ``θ ← θ − λ θ``, chained onto a step (SGDW / AdamW, Loshchilov &
    Hutter 2019): the descent step of ``½ λ ‖θ‖²`` taken at the θ that ``update`` receives.

    ``chain(sgd(α), weight_decay(α λ))`` is plain SGD on ``L + ½ λ ‖θ‖²`` (the two terms rounded
    one after the other). With momentum or Adam the decoupled decay is *not* their L2 penalty:
    for ``torch.optim.SGD``'s coupled decay use ``momentum(..., weight_decay=λ)``.

    State: ``()``. Update: ``(λ θ,)``.
    """

    def init(params: Params) -> State:
        del params
        return ()

    def update(grads: Params, state: State, params: Params) -> tuple[Updates, State]:
        return ({k: rate * params[k] for k in grads},), state

    return InnerOptimizer(init, update)


def memory_pull(anchor: Params, beta: float | Tensor) -> InnerOptimizer:
    """The pull of a memory of past tasks, ``θ ← θ + β Σᵢ ωᵢ (θᵢ − θ)``, chained onto a step.

    With weights ``ωᵢ`` that sum to one (a softmax over the retrieved tasks), the term equals
    ``β (θ̄ − θ)`` with ``θ̄ = Σᵢ ωᵢ θᵢ``: ``anchor`` holds θ̄. As a descent step it is
    ``β (θ − θ̄)``, the gradient of ``½ β ‖θ − θ̄‖²``, taken at the θ that ``update`` receives,
    the same θ as the gradient: ``chain(sgd(α), memory_pull(θ̄, β))`` steps
    ``θ ← θ − α∇L(θ) + β (θ̄ − θ)``.

    Tensors of ``params`` missing from ``anchor`` are not pulled. State: ``()``.
    """

    def init(params: Params) -> State:
        del params
        return ()

    def update(grads: Params, state: State, params: Params) -> tuple[Updates, State]:
        del grads
        return ({k: beta * (w - anchor[k]) for k, w in params.items() if k in anchor},), state

    return InnerOptimizer(init, update)


def chain(*transforms: InnerOptimizer) -> InnerOptimizer:
    """The transforms one after the other: each sees the same gradient and the same θ, and
    their terms are subtracted in the order given. State: the tuple of their states."""

    def init(params: Params) -> State:
        return tuple(t.init(params) for t in transforms)

    def update(grads: Params, state: State, params: Params) -> tuple[Updates, State]:
        terms: list[Params] = []
        states = []
        for transform, s in zip(transforms, state, strict=True):
            u, s = transform.update(grads, s, params)
            terms.extend(u)
            states.append(s)
        return tuple(terms), tuple(states)

    return InnerOptimizer(init, update)


def _per_tensor(lr: float | Tensor | Params, key: str) -> float | Tensor:
    return lr[key] if isinstance(lr, dict) else lr
