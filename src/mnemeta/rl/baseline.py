"""The linear feature baseline of Duan et al. (2016), fitted per task in closed form.

rllab's ``LinearFeatureBaseline`` (``rllab/baselines/linear_feature_baseline.py``, identical in
``rll/rllab`` and ``cbfinn/maml_rl``), which Finn et al. (2017, §5.3) fit "separately at each
iteration for each sampled task in the batch":

- features of step ``t`` of a path: ``[o, o², t/100, (t/100)², (t/100)³, 1]`` with ``o`` the
  observation clipped to ``[-10, 10]`` (``o²`` is of the clipped ``o``) and ``t = 0, 1, …``
  the step's index in its path;
- coefficients by ridge regression on the discounted returns-to-go of all the task's paths,
  ``c = (FᵀF + λ I)⁻¹ Fᵀ R`` with ``λ = reg_coeff = 1e-5`` (the bias column is regularised
  too), solved in float64 as numpy does there.

maml_rl's ``fit`` retries with ``10 λ`` (up to five times) when ``lstsq`` returns NaN; for
``λ > 0`` the matrix is positive definite and float64 solves it, so no retry is made here.
maml_rl (``rllab/sampler/base.py`` at 9c8e2eb) fits the baseline on a task's paths *before*
predicting those same paths; :func:`fit_predict` does the same.

Masked steps (after a trajectory ended) have zero features, so they add nothing to ``FᵀF``
or ``FᵀR``: the fit sees exactly the steps the reference's cut paths hold.
"""

from __future__ import annotations

import torch
from torch import Tensor

REG_COEFF = 1e-5  # rllab's default ridge λ, also maml_rl's
OBS_CLIP = 10.0  # rllab clips observations to [-10, 10] before the features


def features(obs: Tensor, mask: Tensor) -> Tensor:
    """``obs (tasks, trajectories, horizon, obs_size)``, ``mask (tasks, trajectories,
    horizon)`` -> ``(tasks, trajectories, horizon, 2 * obs_size + 4)``; zero where masked."""
    o = obs.clamp(-OBS_CLIP, OBS_CLIP)
    horizon = obs.shape[2]
    t = torch.arange(horizon, device=obs.device, dtype=obs.dtype) / 100.0
    t = t.view(1, 1, horizon, 1).expand(*obs.shape[:3], 1)
    ones = torch.ones_like(t)
    feats = torch.cat([o, o.square(), t, t.square(), t**3, ones], dim=-1)
    return feats * mask.unsqueeze(-1)


def fit(obs: Tensor, returns: Tensor, mask: Tensor, *, reg_coeff: float = REG_COEFF) -> Tensor:
    """Ridge coefficients per task, float64 ``(tasks, 2 * obs_size + 4)``.

    ``returns`` ``(tasks, trajectories, horizon)``: the targets (returns-to-go). All the
    trajectories of a task share its coefficients; tasks never mix.
    """
    x = features(obs.double(), mask.double()).flatten(1, 2)  # (tasks, rows, F)
    y = (returns.double() * mask.double()).flatten(1, 2).unsqueeze(-1)  # (tasks, rows, 1)
    gram = x.transpose(1, 2) @ x
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    coeffs = torch.linalg.solve(gram + reg_coeff * eye, x.transpose(1, 2) @ y)
    return coeffs.squeeze(-1)


def predict(coeffs: Tensor, obs: Tensor, mask: Tensor) -> Tensor:
    """The baseline ``b(s_t)`` ``(tasks, trajectories, horizon)`` in the dtype of ``obs``; 0
    where masked. ``coeffs``: :func:`fit`'s ``(tasks, F)``."""
    feats = features(obs.double(), mask.double())
    values = (feats @ coeffs.unsqueeze(1).unsqueeze(-1)).squeeze(-1)
    return values.to(obs.dtype)


def fit_predict(
    obs: Tensor, returns: Tensor, mask: Tensor, *, reg_coeff: float = REG_COEFF
) -> Tensor:
    """Fit on a task's trajectories, then predict those same trajectories (maml_rl's order):
    ``(tasks, trajectories, horizon)``."""
    return predict(fit(obs, returns, mask, reg_coeff=reg_coeff), obs, mask)
