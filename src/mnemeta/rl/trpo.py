"""Trust-region policy optimisation's step (Schulman et al. 2015), over a dict of parameters.

MAML-RL's outer loop (Finn et al. 2017, §5.3) is TRPO on the meta-objective: the direction is the
natural gradient ``x = F⁻¹ g``, found by conjugate gradient with Fisher-vector products (the
Hessian of the mean KL divergence between the old and the new policy, times a vector, by double
back-propagation: F is never formed), scaled so that the quadratic model of the KL equals
``max_kl``: ``Δθ = −sqrt(2 δ / (xᵀ F x)) · x``. A backtracking line search then shrinks the step
until the loss improves *and* the true KL is at most ``max_kl``; if no shrunken step qualifies,
the parameters stay where they were (rllab's and the MAML code's behaviour). Damping
``F + λI`` (λ = 1e-5 as there) keeps conjugate gradient stable where the Fisher is singular.

Everything is a function of ``params``: ``loss_fn(params)`` (to minimise: the negative surrogate
return) and ``kl_fn(params)`` (zero at the old parameters), so the same step serves a policy whose
loss runs through an inner adaptation step (the meta-objective), which ``torch.optim`` cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]


@dataclass(frozen=True)
class TrpoStep:
    """What one step did."""

    loss_before: float
    loss_after: float
    kl: float  # the mean KL between the old and the accepted policy (0 if none was accepted)
    step_fraction: float  # the accepted fraction of the full natural-gradient step (0: none)
    backtracks: int


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, *, iters: int = 10, tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for a symmetric positive definite ``A`` given as
    ``matvec(v) = A v``, from ``x = 0`` (Hestenes & Stiefel; ``iters`` as rllab's 10)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def trpo_step(
    params: Params,
    loss_fn: Callable[[Params], Tensor],
    kl_fn: Callable[[Params], Tensor],
    *,
    max_kl: float = 0.01,
    damping: float = 1e-5,
    cg_iters: int = 10,
    backtrack: float = 0.5,
    max_backtracks: int = 15,
    sum_over_ranks: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Params, TrpoStep]:
    """One TRPO step from ``params``; returns the new parameters (detached) and a summary.

    Args:
        params: the policy's parameters (the names ``loss_fn`` and ``kl_fn`` take).
        loss_fn: the loss to minimise at given parameters, differentiable in them.
        kl_fn: the mean KL divergence between the policy at ``params`` and at the given
            parameters (0 and with zero gradient at ``params``).
        max_kl: the trust region δ (MAML-RL: 0.01).
        damping: λ of ``F + λI``.
        backtrack: the line search's shrink factor; ``max_backtracks``: how often it shrinks.
        sum_over_ranks: under torchrun, the all-reduce that sums a detached tensor over the
            ranks (:class:`mnemeta.rl.shard.TaskShard`). ``loss_fn`` and ``kl_fn`` then return
            this rank's *part* of the batch's loss and KL (which sum to them), and the gradient,
            every Fisher-vector product and the line search's values are summed: each rank
            takes the one-process step on the whole batch, and all stay equal.
    """
    combine = sum_over_ranks if sum_over_ranks is not None else _alone
    names = list(params)
    theta = [params[n].detach() for n in names]

    def as_params(flat: Tensor | list[Tensor]) -> Params:
        if isinstance(flat, Tensor):
            flat = list(torch.split(flat, [t.numel() for t in theta]))
        return {n: f.view_as(t) for n, f, t in zip(names, flat, theta, strict=True)}

    start = [t.clone().requires_grad_(True) for t in theta]
    loss = loss_fn(as_params(start))
    grads = torch.autograd.grad(loss, start)
    g = combine(torch.cat([gr.reshape(-1) for gr in grads]).detach())

    kl_start = [t.clone().requires_grad_(True) for t in theta]
    kl = kl_fn(as_params(kl_start))
    kl_grads = torch.autograd.grad(kl, kl_start, create_graph=True)
    flat_kl_grad = torch.cat([gr.reshape(-1) for gr in kl_grads])

    def fisher_vector(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(flat_kl_grad @ v, kl_start, retain_graph=True)
        return combine(torch.cat([h.reshape(-1) for h in hv]).detach()) + damping * v

    x = conjugate_gradient(fisher_vector, g, iters=cg_iters)
    quad = x @ fisher_vector(x)
    flat_theta = torch.cat([t.reshape(-1) for t in theta])
    loss_before = float(combine(loss.detach()))
    if not bool(quad > 0) or not bool(torch.isfinite(quad)):
        return as_params(flat_theta.clone()), TrpoStep(loss_before, loss_before, 0.0, 0.0, 0)
    full = torch.sqrt(2 * max_kl / quad) * x
    with torch.no_grad():
        fraction = 1.0
        for tries in range(max_backtracks):
            candidate = as_params(flat_theta - fraction * full)
            new_loss = float(combine(loss_fn(candidate)))
            new_kl = float(combine(kl_fn(candidate)))
            if new_loss < loss_before and new_kl <= max_kl:
                return candidate, TrpoStep(loss_before, new_loss, new_kl, fraction, tries)
            fraction *= backtrack
    return as_params(flat_theta.clone()), TrpoStep(
        loss_before, loss_before, 0.0, 0.0, max_backtracks
    )


def _alone(value: Tensor) -> Tensor:
    """One process: the sum over the ranks is the value itself."""
    return value
