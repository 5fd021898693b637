"""MAML-RL's inner step (Finn et al. 2017, §5.3): one policy-gradient step per task.

``θ'_i = θ - α ∇_θ L_i(θ)``, with ``L_i`` the VPG surrogate of task ``i``'s trajectories
(:func:`mnemeta.rl.vpg.vpg_loss`, advantages from the linear baseline, normalised per task),
taken with the one inner optimiser (:func:`~mnemeta.algorithms.inner_optim.sgd`). With
``first_order=False`` the graph of the inner gradient is kept, so a loss at ``θ'_i``
differentiates back to ``θ`` through the step (the meta-gradient of MAML, second order);
``first_order=True`` detaches the inner gradient.

Only the inner step lives here; the outer update (TRPO in the paper) and the recipe come later.
The module is not imported by :mod:`mnemeta.algorithms`: it registers no learner yet.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mnemeta.algorithms.inner_optim import Params, apply_updates, sgd
from mnemeta.rl.policy import GaussianMLPPolicy
from mnemeta.rl.rollout import Trajectories
from mnemeta.rl.vpg import vpg_loss

INNER_LR = 0.1  # α of the paper's RL runs (Appendix A.2); maml_trpo_point.py launched with 0.5


def inner_step(
    policy: GaussianMLPPolicy,
    params: Params,
    trajs: Trajectories,
    advantages: Tensor,
    *,
    lr: float | Tensor | Params = INNER_LR,
    first_order: bool = False,
) -> list[Params]:
    """One SGD step of each task's VPG surrogate from the shared ``params``.

    Args:
        params: θ, one set of weights for every task (e.g. ``policy.params()``).
        trajs / advantages: the tasks' pre-update rollouts, ``(tasks, trajectories, horizon,
            ...)``, and their advantages (:func:`mnemeta.rl.vpg.estimate_advantages`).
        lr: α, a number or one tensor per weight (Meta-SGD), as for
            :func:`~mnemeta.algorithms.inner_optim.sgd`.

    Returns the fast weights θ'_i, one dict per task, in task order. A per-task loop: each
    task's gradient of its own surrogate (``torch.autograd.grad`` also runs under
    ``torch.no_grad``, for evaluation).
    """
    opt = sgd(lr)
    names = list(params)
    fast: list[Params] = []
    with torch.enable_grad():
        for i in range(trajs.tasks):
            # A weight that does not require grad (a frozen one) gets its inner gradient from a
            # detached leaf; the others are differentiated where they are, for the meta-gradient.
            leaves = {
                k: w if w.requires_grad else w.detach().requires_grad_() for k, w in params.items()
            }
            task = trajs.select(slice(i, i + 1))
            loss = vpg_loss(policy, leaves, task, advantages[i : i + 1]).sum()
            grads = torch.autograd.grad(
                loss, [leaves[k] for k in names], create_graph=not first_order, allow_unused=True
            )
            grad_dict = {
                k: torch.zeros_like(params[k]) if g is None else g
                for k, g in zip(names, grads, strict=True)
            }
            if first_order:
                grad_dict = {k: g.detach() for k, g in grad_dict.items()}
            updates, _ = opt.update(grad_dict, opt.init(params), params)
            fast.append(apply_updates(params, updates))
    return fast
