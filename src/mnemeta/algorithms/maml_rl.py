"""MAML-RL (Finn et al. 2017, §5.3): the inner policy-gradient step and the outer TRPO step.

``θ'_i = θ - α ∇_θ L_i(θ)``, with ``L_i`` the VPG surrogate of task ``i``'s trajectories
(:func:`mnemeta.rl.vpg.vpg_loss`, advantages from the linear baseline, normalised per task),
taken with the one inner optimiser (:func:`~mnemeta.algorithms.inner_optim.sgd`). With
``first_order=False`` the graph of the inner gradient is kept, so a loss at ``θ'_i``
differentiates back to ``θ`` through the step (the meta-gradient of MAML, second order);
``first_order=True`` detaches the inner gradient.

:func:`meta_step` is one meta-iteration: goals, pre-update rollouts at θ, the inner step,
post-update rollouts at θ'_i, then one TRPO step of θ on the meta-objective. What the reference
code optimises (``cbfinn/maml_rl`` at 725c800, ``sandbox/rocky/tf/algos/maml_npo.py``, which
``maml_trpo.py`` runs with rllab's ``ConjugateGradientOptimizer``):

- **The surrogate** is ``-mean_i mean_{steps} r_i · A'_i`` with the likelihood ratio
  ``r_i = π_{θ'_i(θ)}(a | s) / π_old(a | s)`` over task ``i``'s post-update ("test") paths:
  ``tf.reduce_mean(lr * adv)`` over the task's concatenated steps, then the mean over the
  meta-batch. ``π_old`` is the distribution recorded while sampling those paths (the
  ``agent_infos`` of the last sampling step, ``kl_constrain_step = -1``), that is
  ``π_{θ'_i(θ_old)}``; θ'_i(θ) is rebuilt from θ inside the graph, so the gradient flows
  through the inner step. A'_i are the post-update paths' own advantages (baseline fitted on
  them, normalised per task), constants.
- **The constraint** is ``KL(π_old ‖ π_{θ'_i(θ)})`` (``dist.kl_sym(old, new)``) at the
  post-update paths' states, concatenated over *all* tasks and then averaged
  (``tf.reduce_mean(tf.concat(kls, 0))``): a mean over every visited state of the meta-batch,
  so a task with more steps weighs more; ≤ ``step_size = 0.01``.
- **Without MAML** (``use_maml=False``, the "pretrained" comparison) the loss is the first
  step's plain surrogate ``-mean(log π · A)`` on the pre-update paths, taken there with a
  first-order optimiser; here ``adapt=False`` keeps the TRPO step (the ratio surrogate and the
  KL at θ itself on the pre-update paths), so that the two arms differ only in the inner step.

The module is not imported by :mod:`mnemeta.algorithms`: it registers no learner yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.algorithms.inner_optim import Params, apply_updates, sgd
from mnemeta.algorithms.meta_rl import iteration_generator
from mnemeta.rl.environment import TaskEnvironment
from mnemeta.rl.policy import GaussianMLPPolicy
from mnemeta.rl.rollout import Trajectories, concatenate, rollout
from mnemeta.rl.trpo import trpo_step
from mnemeta.rl.vpg import estimate_advantages, vpg_loss

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


def gaussian_kl(
    old_mean: Tensor, old_log_std: Tensor, new_mean: Tensor, new_log_std: Tensor
) -> Tensor:
    """``KL(N(μ_o, σ_o²) ‖ N(μ_n, σ_n²))`` of diagonal Gaussians, summed over the action's
    coordinates (rllab's ``DiagonalGaussian.kl_sym``): ``(..., action_size)`` -> ``(...)``."""
    var_ratio = torch.exp(2 * (old_log_std - new_log_std))
    mean_term = (old_mean - new_mean).square() * torch.exp(-2 * new_log_std)
    kl = new_log_std - old_log_std + 0.5 * (var_ratio + mean_term) - 0.5
    return kl.sum(dim=-1)


def meta_objective(
    policy: GaussianMLPPolicy,
    params: Params,
    pre: Trajectories,
    pre_advantages: Tensor,
    post: Trajectories,
    post_advantages: Tensor,
    *,
    lr: float | Tensor | Params = INNER_LR,
    first_order: bool = False,
) -> tuple[Callable[[Params], Tensor], Callable[[Params], Tensor]]:
    """``(loss_fn, kl_fn)`` of maml_rl's outer TRPO step (see the module), at ``params`` = θ_old.

    ``loss_fn(θ)`` = ``-mean_i [Σ m exp(log π_{θ'_i(θ)} - log π_old) A'_i / Σ m]`` over the
    post-update trajectories ``post`` of task ``i``, with θ'_i(θ) the inner step of ``pre``;
    ``kl_fn(θ)`` = ``Σ_{i,n,t} m KL(π_old ‖ π_{θ'_i(θ)}) / Σ m``, pooled over every task's
    visited states. ``π_old = π_{θ'_i(θ_old)}``, computed once here.
    """
    with torch.no_grad():
        old_fast = inner_step(policy, params, pre, pre_advantages, lr=lr, first_order=True)
        old_fast = [{k: w.detach() for k, w in f.items()} for f in old_fast]
        old_dist = [
            policy.distribution(old_fast[i], post.obs[i : i + 1]) for i in range(post.tasks)
        ]
        old_logp = torch.cat(
            [
                policy.log_prob(old_fast[i], post.obs[i : i + 1], post.actions[i : i + 1])
                for i in range(post.tasks)
            ]
        )
    mask = post.mask
    steps = mask.sum(dim=(1, 2))

    def fast(theta: Params) -> list[Params]:
        return inner_step(policy, theta, pre, pre_advantages, lr=lr, first_order=first_order)

    def loss_fn(theta: Params) -> Tensor:
        per_task = []
        for i, f in enumerate(fast(theta)):
            obs, act = post.obs[i : i + 1], post.actions[i : i + 1]
            ratio = torch.exp(policy.log_prob(f, obs, act) - old_logp[i : i + 1])
            per_task.append(-(ratio * post_advantages[i : i + 1] * mask[i : i + 1]).sum())
        return (torch.stack(per_task) / steps).mean()

    def kl_fn(theta: Params) -> Tensor:
        total = torch.zeros((), dtype=mask.dtype, device=mask.device)
        for i, f in enumerate(fast(theta)):
            mean, log_std = policy.distribution(f, post.obs[i : i + 1])
            old_mean, old_log_std = old_dist[i]
            kl = gaussian_kl(old_mean, old_log_std, mean, log_std)
            total = total + (kl * mask[i : i + 1]).sum()
        return total / mask.sum()

    return loss_fn, kl_fn


def joint_objective(
    policy: GaussianMLPPolicy, params: Params, trajs: Trajectories, advantages: Tensor
) -> tuple[Callable[[Params], Tensor], Callable[[Params], Tensor]]:
    """``(loss_fn, kl_fn)`` of plain TRPO on every task's trajectories at once, no inner step:
    the ratio surrogate against ``π_{θ_old}`` (per-task step means, then the task mean) and the
    KL pooled over all visited states — the "pretrained" comparison of the paper."""
    mask = trajs.mask
    with torch.no_grad():
        old_mean, old_log_std = policy.distribution(params, trajs.obs)
        old_logp = policy.log_prob(params, trajs.obs, trajs.actions)
    steps = mask.sum(dim=(1, 2))

    def loss_fn(theta: Params) -> Tensor:
        ratio = torch.exp(policy.log_prob(theta, trajs.obs, trajs.actions) - old_logp)
        return (-(ratio * advantages * mask).sum(dim=(1, 2)) / steps).mean()

    def kl_fn(theta: Params) -> Tensor:
        mean, log_std = policy.distribution(theta, trajs.obs)
        kl = gaussian_kl(old_mean, old_log_std, mean, log_std)
        return (kl * mask).sum() / mask.sum()

    return loss_fn, kl_fn


@dataclass(frozen=True)
class MetaStepMetrics:
    """What one meta-iteration measured. Returns are undiscounted, averaged over every
    trajectory of the meta-batch; ``post_return`` is NaN when no inner step was taken."""

    pre_return: float
    post_return: float
    kl: float  # the accepted step's mean KL (0 when the line search kept θ)
    loss_before: float
    loss_after: float
    step_fraction: float


def meta_step(
    policy: GaussianMLPPolicy,
    params: Params,
    env: TaskEnvironment,
    *,
    seed: int,
    iteration: int,
    meta_batch: int = 20,
    lr: float | Tensor | Params = INNER_LR,
    max_kl: float = 0.01,
    first_order: bool = False,
    adapt: bool = True,
) -> tuple[Params, MetaStepMetrics]:
    """One meta-iteration of MAML-RL with a TRPO outer step (see the module).

    Args:
        params: θ (detached weights; e.g. ``{k: w.detach() for k, w in policy.params().items()}``).
        env: the batched environment; ``env.envs_per_task`` is K, the trajectories per task for
            the inner step and again for the outer step.
        seed / iteration: the draw of goals and actions (:func:`iteration_generator`).
        meta_batch: tasks per iteration (the paper: 20 for 2D navigation).
        lr: the inner step size α; ``max_kl``: TRPO's δ.
        first_order: detach the inner gradient (FOMAML's meta-gradient).
        adapt: False gives the pretrained comparison: TRPO on the pre-update trajectories,
            no inner step, no post-update rollouts.

    Returns the new θ (detached) and :class:`MetaStepMetrics`.
    """
    gen = iteration_generator(seed, iteration)
    params = {k: w.detach() for k, w in params.items()}
    dtype = next(iter(params.values())).dtype
    goals = env.sample_tasks(meta_batch, generator=gen, dtype=dtype)
    pre = rollout(policy, params, env, goals, generator=gen)
    pre_adv = estimate_advantages(pre)
    pre_return = float(pre.undiscounted_return().mean())
    if adapt:
        fast = inner_step(policy, params, pre, pre_adv, lr=lr, first_order=True)
        post = concatenate(post_update_rollouts(policy, fast, env, goals, generator=gen))
        post_adv = estimate_advantages(post)
        post_return = float(post.undiscounted_return().mean())
        loss_fn, kl_fn = meta_objective(
            policy, params, pre, pre_adv, post, post_adv, lr=lr, first_order=first_order
        )
    else:
        post_return = float("nan")
        loss_fn, kl_fn = joint_objective(policy, params, pre, pre_adv)
    new, step = trpo_step(params, loss_fn, kl_fn, max_kl=max_kl)
    return new, MetaStepMetrics(
        pre_return, post_return, step.kl, step.loss_before, step.loss_after, step.step_fraction
    )


def post_update_rollouts(
    policy: GaussianMLPPolicy,
    fast: list[Params],
    env: TaskEnvironment,
    goals: Tensor,
    *,
    generator: torch.Generator,
) -> list[Trajectories]:
    """Each task's rollouts at its own fast weights θ'_i (detached), in task order, drawing from
    ``generator`` task after task."""
    return [
        rollout(
            policy,
            {k: w.detach() for k, w in weights.items()},
            env,
            goals[i : i + 1],
            generator=generator,
        )
        for i, weights in enumerate(fast)
    ]


def adapt_and_evaluate(
    policy: GaussianMLPPolicy,
    params: Params,
    env: TaskEnvironment,
    goals: Tensor,
    *,
    generator: torch.Generator,
    lr: float | Tensor | Params = INNER_LR,
) -> tuple[Tensor, Tensor]:
    """The paper's test: per task of ``goals``, the mean undiscounted return of
    ``env.envs_per_task`` trajectories at θ, then one inner step on those trajectories and the
    mean return of fresh trajectories at θ'_i. Returns ``(before, after)``, each ``(tasks,)``."""
    params = {k: w.detach() for k, w in params.items()}
    pre = rollout(policy, params, env, goals, generator=generator)
    adv = estimate_advantages(pre)
    fast = inner_step(policy, params, pre, adv, lr=lr, first_order=True)
    after = [
        t.undiscounted_return().mean()
        for t in post_update_rollouts(policy, fast, env, goals, generator=generator)
    ]
    return pre.undiscounted_return().mean(dim=1), torch.stack(after)
