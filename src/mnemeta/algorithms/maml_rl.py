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

:class:`MAMLRL` wraps these as the registry's ``maml_rl`` learner (``recipe = "rl"``), with a
PPO-style outer step (:func:`ppo_meta_step`) as the alternative to TRPO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mnemeta.algorithms.inner_optim import Params, apply_updates, sgd
from mnemeta.algorithms.meta_rl import iteration_generator
from mnemeta.checks import checked
from mnemeta.registry import LEARNERS, BuildContext, LearnerConfig, LearnerSpec
from mnemeta.rl.environment import TaskEnvironment
from mnemeta.rl.policy import GaussianMLPPolicy
from mnemeta.rl.rollout import DISCOUNT, Trajectories, rollout
from mnemeta.rl.shard import TaskShard, batch_mean, share_of_mean, sum_gradients, total
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
    clip: float | None = None,
    shard: TaskShard | None = None,
) -> tuple[Callable[[Params], Tensor], Callable[[Params], Tensor]]:
    """``(loss_fn, kl_fn)`` of maml_rl's outer TRPO step (see the module), at ``params`` = θ_old.

    With ``clip`` = ε the surrogate is PPO's pessimistic one, ``min(r A', clip(r, 1 - ε, 1 + ε)
    A')`` per step (Schulman et al. 2017, eq. 7), for the PPO-style outer step.

    ``loss_fn(θ)`` = ``-mean_i [Σ m exp(log π_{θ'_i(θ)} - log π_old) A'_i / Σ m]`` over the
    post-update trajectories ``post`` of task ``i``, with θ'_i(θ) the inner step of ``pre``;
    ``kl_fn(θ)`` = ``Σ_{i,n,t} m KL(π_old ‖ π_{θ'_i(θ)}) / Σ m``, pooled over every task's
    visited states. ``π_old = π_{θ'_i(θ_old)}``, computed once here.

    With a ``shard`` (torchrun) the trajectories are this rank's tasks, and both functions
    return this rank's part of the batch's value: the task mean divided by the batch's task
    count, the KL by the batch's visited states (:mod:`mnemeta.rl.shard`).
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
    visited = total(mask.sum(), shard)

    def fast(theta: Params) -> list[Params]:
        return inner_step(policy, theta, pre, pre_advantages, lr=lr, first_order=first_order)

    def loss_fn(theta: Params) -> Tensor:
        per_task = []
        for i, f in enumerate(fast(theta)):
            obs, act = post.obs[i : i + 1], post.actions[i : i + 1]
            ratio = torch.exp(policy.log_prob(f, obs, act) - old_logp[i : i + 1])
            adv = post_advantages[i : i + 1]
            gain = ratio * adv
            if clip is not None:
                gain = torch.minimum(gain, ratio.clamp(1 - clip, 1 + clip) * adv)
            per_task.append(-(gain * mask[i : i + 1]).sum())
        return share_of_mean(torch.stack(per_task) / steps, shard)

    def kl_fn(theta: Params) -> Tensor:
        summed = torch.zeros((), dtype=mask.dtype, device=mask.device)
        for i, f in enumerate(fast(theta)):
            mean, log_std = policy.distribution(f, post.obs[i : i + 1])
            old_mean, old_log_std = old_dist[i]
            kl = gaussian_kl(old_mean, old_log_std, mean, log_std)
            summed = summed + (kl * mask[i : i + 1]).sum()
        return summed / visited

    return loss_fn, kl_fn


def joint_objective(
    policy: GaussianMLPPolicy,
    params: Params,
    trajs: Trajectories,
    advantages: Tensor,
    *,
    shard: TaskShard | None = None,
) -> tuple[Callable[[Params], Tensor], Callable[[Params], Tensor]]:
    """``(loss_fn, kl_fn)`` of plain TRPO on every task's trajectories at once, no inner step:
    the ratio surrogate against ``π_{θ_old}`` (per-task step means, then the task mean) and the
    KL pooled over all visited states — the "pretrained" comparison of the paper. A ``shard``'s
    parts as in :func:`meta_objective`."""
    mask = trajs.mask
    with torch.no_grad():
        old_mean, old_log_std = policy.distribution(params, trajs.obs)
        old_logp = policy.log_prob(params, trajs.obs, trajs.actions)
    steps = mask.sum(dim=(1, 2))
    visited = total(mask.sum(), shard)

    def loss_fn(theta: Params) -> Tensor:
        ratio = torch.exp(policy.log_prob(theta, trajs.obs, trajs.actions) - old_logp)
        return share_of_mean(-(ratio * advantages * mask).sum(dim=(1, 2)) / steps, shard)

    def kl_fn(theta: Params) -> Tensor:
        mean, log_std = policy.distribution(theta, trajs.obs)
        kl = gaussian_kl(old_mean, old_log_std, mean, log_std)
        return (kl * mask).sum() / visited

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
    step_fraction: float  # TRPO: the line search's accepted fraction; PPO: the clipped fraction


@dataclass(frozen=True)
class _Sampled:
    """One meta-iteration's data: the rollouts before and after the inner step."""

    pre: Trajectories
    pre_advantages: Tensor
    post: Trajectories | None
    post_advantages: Tensor | None


def _sample_iteration(
    policy: GaussianMLPPolicy,
    params: Params,
    env: TaskEnvironment,
    *,
    seed: int,
    iteration: int,
    meta_batch: int,
    lr: float | Tensor | Params,
    adapt: bool,
    discount: float,
    shard: TaskShard | None,
) -> _Sampled:
    """Tasks, pre-update rollouts at θ and (``adapt``) post-update rollouts at each θ'_i, all
    drawn from :func:`iteration_generator` in that order (a ``shard``'s tasks alone, with the
    draws of the whole batch)."""
    gen = iteration_generator(seed, iteration)
    dtype = next(iter(params.values())).dtype
    tasks = env.sample_tasks(meta_batch, generator=gen, dtype=dtype)
    if shard is not None:
        tasks = shard.part(tasks)
    pre = rollout(policy, params, env, tasks, generator=gen, discount=discount, shard=shard)
    pre_adv = estimate_advantages(pre)
    if not adapt:
        return _Sampled(pre, pre_adv, None, None)
    fast = inner_step(policy, params, pre, pre_adv, lr=lr, first_order=True)
    post = post_update_rollouts(
        policy, fast, env, tasks, generator=gen, discount=discount, shard=shard
    )
    return _Sampled(pre, pre_adv, post, estimate_advantages(post))


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
    discount: float = DISCOUNT,
    shard: TaskShard | None = None,
) -> tuple[Params, MetaStepMetrics]:
    """One meta-iteration of MAML-RL with a TRPO outer step (see the module).

    Args:
        params: θ (detached weights; e.g. ``{k: w.detach() for k, w in policy.params().items()}``).
        env: the batched environment; ``env.envs_per_task`` is K, the trajectories per task for
            the inner step and again for the outer step.
        seed / iteration: the draw of tasks and actions (:func:`iteration_generator`).
        meta_batch: tasks per iteration (the paper: 20 for 2D navigation).
        lr: the inner step size α; ``max_kl``: TRPO's δ.
        first_order: detach the inner gradient (FOMAML's meta-gradient).
        adapt: False gives the pretrained comparison: TRPO on the pre-update trajectories,
            no inner step, no post-update rollouts.
        shard: under torchrun, this rank's tasks of the meta-batch (:mod:`mnemeta.rl.shard`):
            it rolls out and differentiates those alone; the TRPO step sums the ranks' parts,
            so every rank takes one process's step.

    Returns the new θ (detached) and :class:`MetaStepMetrics`, the whole batch's.
    """
    params = {k: w.detach() for k, w in params.items()}
    data = _sample_iteration(
        policy,
        params,
        env,
        seed=seed,
        iteration=iteration,
        meta_batch=meta_batch,
        lr=lr,
        adapt=adapt,
        discount=discount,
        shard=shard,
    )
    if data.post is not None and data.post_advantages is not None:
        loss_fn, kl_fn = meta_objective(
            policy,
            params,
            data.pre,
            data.pre_advantages,
            data.post,
            data.post_advantages,
            lr=lr,
            first_order=first_order,
            shard=shard,
        )
    else:
        loss_fn, kl_fn = joint_objective(policy, params, data.pre, data.pre_advantages, shard=shard)
    new, step = trpo_step(
        params,
        loss_fn,
        kl_fn,
        max_kl=max_kl,
        sum_over_ranks=None if shard is None else shard.sum_over_ranks,
    )
    return new, MetaStepMetrics(
        _mean_return(data.pre, shard),
        _mean_return(data.post, shard),
        step.kl,
        step.loss_before,
        step.loss_after,
        step.step_fraction,
    )


PPO_CLIP = 0.2  # ε of PPO (Schulman et al. 2017) and of ProMP's PPO-MAML outer step
PPO_EPOCHS = 5  # gradient steps on one meta-batch's data (ProMP's num_inner_grad_steps... 5)


def ppo_meta_step(
    policy: GaussianMLPPolicy,
    optimizer: torch.optim.Optimizer,
    env: TaskEnvironment,
    *,
    seed: int,
    iteration: int,
    meta_batch: int = 20,
    lr: float | Tensor | Params = INNER_LR,
    clip: float = PPO_CLIP,
    epochs: int = PPO_EPOCHS,
    first_order: bool = False,
    discount: float = DISCOUNT,
    shard: TaskShard | None = None,
) -> MetaStepMetrics:
    """One meta-iteration with the PPO-style outer step: the same rollouts as
    :func:`meta_step`, then ``epochs`` steps of ``optimizer`` on the clipped meta-surrogate
    (the inner step rebuilt from θ at every epoch, so the meta-gradient runs through it, as
    ProMP's "MAML + PPO"), updating ``policy``'s own weights in place.

    ``MetaStepMetrics.kl`` is the pooled KL after the last epoch (not constrained: the clip
    keeps the step small), ``step_fraction`` the fraction of post-update steps whose ratio
    left ``[1 - clip, 1 + clip]`` at the last epoch. With a ``shard`` (torchrun) each rank
    differentiates its tasks' part of the loss and the gradients are summed over the ranks
    before every Adam step, so every rank takes one process's steps.
    """
    params = policy.params()
    # θ_old, a copy: the optimiser updates the policy's weights (and so their detached views)
    # in place.
    detached = {k: w.detach().clone() for k, w in params.items()}
    data = _sample_iteration(
        policy,
        detached,
        env,
        seed=seed,
        iteration=iteration,
        meta_batch=meta_batch,
        lr=lr,
        adapt=True,
        discount=discount,
        shard=shard,
    )
    assert data.post is not None and data.post_advantages is not None
    loss_fn, kl_fn = meta_objective(
        policy,
        detached,
        data.pre,
        data.pre_advantages,
        data.post,
        data.post_advantages,
        lr=lr,
        first_order=first_order,
        clip=clip,
        shard=shard,
    )
    first = last = float("nan")
    weights = list(params.values())
    for epoch in range(epochs):
        loss = loss_fn(params)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        (summed,) = sum_gradients(weights, shard, extras=[loss])
        optimizer.step()
        if epoch == 0:
            first = float(summed)
    with torch.no_grad():
        now = {k: w.detach() for k, w in params.items()}
        last = float(total(loss_fn(now), shard))
        kl = float(total(kl_fn(now), shard))
        clipped = _clipped_fraction(policy, detached, now, data, lr=lr, clip=clip, shard=shard)
    return MetaStepMetrics(
        _mean_return(data.pre, shard), _mean_return(data.post, shard), kl, first, last, clipped
    )


def _clipped_fraction(
    policy: GaussianMLPPolicy,
    old: Params,
    new: Params,
    data: _Sampled,
    *,
    lr: float | Tensor | Params,
    clip: float,
    shard: TaskShard | None,
) -> float:
    """The fraction of post-update steps whose likelihood ratio is outside the clip range (of
    the whole batch's steps, under torchrun)."""
    assert data.post is not None
    old_fast = inner_step(policy, old, data.pre, data.pre_advantages, lr=lr, first_order=True)
    new_fast = inner_step(policy, new, data.pre, data.pre_advantages, lr=lr, first_order=True)
    post, outside = data.post, torch.zeros((), dtype=data.post.mask.dtype)
    for i in range(post.tasks):
        obs, act = post.obs[i : i + 1], post.actions[i : i + 1]
        log_ratio = policy.log_prob(new_fast[i], obs, act) - policy.log_prob(old_fast[i], obs, act)
        out = (log_ratio.exp() - 1).abs() > clip
        outside = outside + (out.to(post.mask.dtype) * post.mask[i : i + 1]).sum()
    return float(total(outside / total(post.mask.sum(), shard), shard))


def _mean_return(trajs: Trajectories | None, shard: TaskShard | None) -> float:
    """The mean undiscounted return over every trajectory of the (whole) meta-batch."""
    return float("nan") if trajs is None else float(batch_mean(trajs.undiscounted_return(), shard))


def post_update_rollouts(
    policy: GaussianMLPPolicy,
    fast: list[Params],
    env: TaskEnvironment,
    tasks: Tensor,
    *,
    generator: torch.Generator,
    discount: float = DISCOUNT,
    shard: TaskShard | None = None,
) -> Trajectories:
    """Every task's rollouts at its own fast weights θ'_i (detached), all tasks stepping
    together (:func:`~mnemeta.rl.rollout.rollout` with one set of weights per task)."""
    detached = [{k: w.detach() for k, w in weights.items()} for weights in fast]
    return rollout(
        policy, detached, env, tasks, generator=generator, discount=discount, shard=shard
    )


def adapt_and_evaluate(
    policy: GaussianMLPPolicy,
    params: Params,
    env: TaskEnvironment,
    tasks: Tensor,
    *,
    generator: torch.Generator,
    lr: float | Tensor | Params = INNER_LR,
    steps: int = 1,
    discount: float = DISCOUNT,
    shard: TaskShard | None = None,
) -> dict[str, Tensor]:
    """The paper's test on ``tasks``: ``env.envs_per_task`` trajectories at θ, one inner step
    on them, fresh trajectories at θ'_i, and again up to ``steps`` inner steps (each step on
    the trajectories of the weights it starts from, as the paper's Figure 5).

    Returns ``{"before": (tasks,), "after_1": ..., "after_<steps>": ...}``, each task's mean
    undiscounted return at each stage, and where the environment reports success the same
    columns prefixed ``success_`` (the fraction of the task's trajectories that succeeded).
    ``shard``: ``tasks`` are this rank's rows of the test's tasks, run with the whole test's
    draws; the columns are this rank's rows.
    """
    current: list[Params] | Params = {k: w.detach() for k, w in params.items()}
    out: dict[str, Tensor] = {}
    success: dict[str, Tensor] = {}
    for stage in range(steps + 1):
        name = "before" if stage == 0 else f"after_{stage}"
        trajs = rollout(
            policy, current, env, tasks, generator=generator, discount=discount, shard=shard
        )
        out[name] = trajs.undiscounted_return().mean(dim=1)
        if env.success is not None:
            success[f"success_{name}"] = env.success.to(out[name].dtype).mean(dim=1)
        if stage == steps:
            break
        adv = estimate_advantages(trajs)
        if isinstance(current, dict):
            current = inner_step(policy, current, trajs, adv, lr=lr, first_order=True)
        else:
            current = [
                inner_step(
                    policy,
                    w,
                    trajs.select(slice(i, i + 1)),
                    adv[i : i + 1],
                    lr=lr,
                    first_order=True,
                )[0]
                for i, w in enumerate(current)
            ]
        current = [{k: w.detach() for k, w in f.items()} for f in current]
    return {**out, **success}


# ---- the learner the registry builds (recipe "rl") ----


@dataclass
class MAMLRLConfig(LearnerConfig):
    """MAML-RL's keys (``[model]``); the environment's are in ``[rl]``."""

    hidden: tuple[int, ...] = checked((100, 100), ge=1)  # the paper's 2 x 100 ReLU policy
    inner_lr: float = checked(INNER_LR, gt=0)  # α of the VPG inner step (the paper: 0.1)
    first_order: bool = False  # detach the inner gradient (first-order MAML)
    # The outer step: TRPO as in the paper, or PPO's clipped surrogate with Adam (ProMP).
    outer: str = checked("trpo", choices=("trpo", "ppo"))
    max_kl: float = checked(0.01, gt=0)  # TRPO's δ (maml_rl's step_size)
    # outer = ppo: Adam's learning rate; at 3e-4 the step's KL on 2D navigation stayed near
    # 0.0006, some 15 x below TRPO's δ, so the variant learnt far more slowly.
    ppo_lr: float = checked(1e-3, gt=0)
    ppo_clip: float = checked(PPO_CLIP, gt=0, lt=1)  # outer = ppo: ε
    ppo_epochs: int = checked(PPO_EPOCHS, ge=1)  # outer = ppo: Adam steps per meta-batch
    eval_steps: int = checked(3, ge=1)  # inner steps at evaluation (the paper plots 0-3)


class MAMLRL(nn.Module):
    """MAML-RL as a :class:`~mnemeta.algorithms.meta_rl.MetaRLLearner`: a Gaussian MLP policy
    (``self.policy``) meta-trained by :func:`meta_step` (TRPO) or :func:`ppo_meta_step`."""

    def __init__(
        self, config: MAMLRLConfig, observation_size: int, action_size: int, discount: float
    ) -> None:
        super().__init__()
        self.config, self.discount = config, discount
        self.policy = GaussianMLPPolicy(observation_size, action_size, hidden=config.hidden)
        self.optimizer: torch.optim.Optimizer | None = None
        if config.outer == "ppo":
            self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.ppo_lr)

    def train_iteration(
        self,
        env: TaskEnvironment,
        *,
        seed: int,
        iteration: int,
        meta_batch: int,
        shard: TaskShard | None = None,
    ) -> dict[str, float]:
        c = self.config
        common: dict[str, Any] = dict(
            seed=seed,
            iteration=iteration,
            meta_batch=meta_batch,
            lr=c.inner_lr,
            first_order=c.first_order,
            discount=self.discount,
            shard=shard,
        )
        if self.optimizer is not None:
            m = ppo_meta_step(
                self.policy, self.optimizer, env, clip=c.ppo_clip, epochs=c.ppo_epochs, **common
            )
        else:
            new, m = meta_step(self.policy, self.policy.params(), env, max_kl=c.max_kl, **common)
            with torch.no_grad():
                for name, weight in self.policy.named_parameters():
                    weight.copy_(new[name])
        return {
            "return": m.pre_return,
            "post_return": m.post_return,
            "kl": m.kl,
            "loss_before": m.loss_before,
            "loss_after": m.loss_after,
            "step_fraction": m.step_fraction,
        }

    def evaluate(
        self,
        env: TaskEnvironment,
        tasks: Tensor,
        *,
        generator: torch.Generator,
        shard: TaskShard | None = None,
    ) -> dict[str, Tensor]:
        return adapt_and_evaluate(
            self.policy,
            self.policy.params(),
            env,
            tasks,
            generator=generator,
            lr=self.config.inner_lr,
            steps=self.config.eval_steps,
            discount=self.discount,
            shard=shard,
        )

    def example_trajectories(
        self, env: TaskEnvironment, tasks: Tensor, *, generator: torch.Generator
    ) -> dict[str, Trajectories]:
        """Trajectories at θ and after one inner step on them, for the Figure-4 plot."""
        params = {k: w.detach() for k, w in self.policy.params().items()}
        pre = rollout(self.policy, params, env, tasks, generator=generator, discount=self.discount)
        adv = estimate_advantages(pre)
        fast = inner_step(self.policy, params, pre, adv, lr=self.config.inner_lr, first_order=True)
        post = post_update_rollouts(
            self.policy, fast, env, tasks, generator=generator, discount=self.discount
        )
        return {"before adaptation": pre, "after 1 step": post}

    def training_state(self) -> dict[str, Any]:
        return {} if self.optimizer is None else {"optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])


def _build(config: MAMLRLConfig, context: BuildContext) -> MAMLRL:
    return MAMLRL(
        config,
        observation_size=context.input_shape[0],
        action_size=context.outputs,
        discount=context.discount,
    )


LEARNERS.register(
    LearnerSpec(
        "maml_rl",
        MAMLRLConfig,
        "MAML for RL (Finn et al. 2017 §5.3): a VPG inner step, a TRPO (or PPO) outer step",
        build=_build,
        recipe="rl",
        backbone=False,
    )
)
