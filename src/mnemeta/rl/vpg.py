"""The vanilla policy gradient (REINFORCE with a baseline) as a surrogate loss, per task.

``L(θ) = -(1 / Σ m) Σ_{n,t} m_{n,t} log π_θ(a_{n,t} | s_{n,t}) A_{n,t}``, whose gradient is the
policy-gradient estimate (Williams 1992) when the advantages ``A`` are constants. This is
maml_rl's inner-loop objective (``sandbox/rocky/tf/algos/maml_npo.py``:
``surr_obj = -tf.reduce_mean(logli * adv)`` over all the steps of one task's paths).

Advantages as maml_rl computes them (``rllab/sampler/base.py`` ``process_samples`` at 9c8e2eb,
with ``BatchMAMLPolopt``'s defaults ``discount=0.99, gae_lambda=1, center_adv=True``):

- GAE with λ = 1 and the value after a path's last step taken as 0, which telescopes to
  ``A_t = R_t - b(s_t)``: returns-to-go minus the linear baseline, fitted on the same task's
  paths just before (:func:`mnemeta.rl.baseline.fit_predict`);
- then, **per task** (``process_samples`` runs once per task's paths), centred and scaled:
  ``(A - mean(A)) / (std(A) + 1e-8)``, numpy's population std (ddof 0) over all the task's
  steps. learn2learn's ``maml_trpo`` example normalises per task too (``ch.normalize``), but
  with torch's unbiased std; the reference's ddof 0 is used here.
"""

from __future__ import annotations

from torch import Tensor

from mnemeta.rl import baseline
from mnemeta.rl.policy import GaussianMLPPolicy, Params
from mnemeta.rl.rollout import Trajectories

ADV_EPS = 1e-8  # rllab's center_advantages: added to the std, not under the square root


def normalize_per_task(advantages: Tensor, mask: Tensor, eps: float = ADV_EPS) -> Tensor:
    """``(A - mean) / (std + eps)`` over each task's unmasked steps, population std:
    ``(tasks, trajectories, horizon)`` -> the same; 0 where masked."""
    n = mask.sum(dim=(1, 2), keepdim=True)
    mean = (advantages * mask).sum(dim=(1, 2), keepdim=True) / n
    var = ((advantages - mean).square() * mask).sum(dim=(1, 2), keepdim=True) / n
    return (advantages - mean) / (var.sqrt() + eps) * mask


def estimate_advantages(
    trajs: Trajectories, *, normalize: bool = True, reg_coeff: float = baseline.REG_COEFF
) -> Tensor:
    """``A = R - b`` with the linear baseline fitted per task, optionally normalised per task
    (the reference's default): ``(tasks, trajectories, horizon)``, detached, 0 where masked."""
    values = baseline.fit_predict(trajs.obs, trajs.returns, trajs.mask, reg_coeff=reg_coeff)
    adv = (trajs.returns - values) * trajs.mask
    if normalize:
        adv = normalize_per_task(adv, trajs.mask)
    return adv.detach()


def surrogate(log_probs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """``-Σ m log π A / Σ m`` per task: ``(tasks, trajectories, horizon)`` x 3 -> ``(tasks,)``.

    The advantages are constants of the gradient (detach them, as :func:`estimate_advantages` does).
    """
    steps = mask.sum(dim=(1, 2))
    return -(log_probs * advantages * mask).sum(dim=(1, 2)) / steps


def vpg_loss(
    policy: GaussianMLPPolicy, params: Params, trajs: Trajectories, advantages: Tensor
) -> Tensor:
    """The surrogate of ``trajs`` at the weights ``params`` (one set for all tasks): ``(tasks,)``.

    For one task's own adapted weights, slice ``trajs`` to that task (or vmap over tasks)."""
    log_probs = policy.log_prob(params, trajs.obs, trajs.actions)
    return surrogate(log_probs, advantages, trajs.mask)
