"""Differentiable addressing of a memory matrix: content- and location-based (Graves et al. 2014).

Every function is pure and batched: a memory is ``(B, N, W)`` (B episodes, N rows of width W),
a set of heads is a leading ``H`` dimension after the batch, and weights over rows are
``(B, H, N)``. No Python loop runs over heads or rows; one addressing step is a handful of
batched tensor ops.

The NTM's addressing pipeline (§3.3, eqs. 5-9) is ``content -> interpolate -> shift ->
sharpen``; :func:`address` composes the four.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

#: Added to norms and normalisers so a zero memory row or a zero weight vector stays finite.
EPS = 1e-8


class HeadParams(NamedTuple):
    """What a controller emits for ``H`` heads, already through their activations.

    Attributes:
        key: ``(B, H, W)``, compared with every memory row.
        strength: ``(B, H)``, β ≥ 0, sharpens the content weights.
        gate: ``(B, H)``, g ∈ [0, 1]: 1 uses the content weights, 0 keeps the previous ones.
        shift: ``(B, H, 2R + 1)``, a distribution over the shifts −R … R.
        sharpen: ``(B, H)``, γ ≥ 1.
    """

    key: Tensor
    strength: Tensor
    gate: Tensor
    shift: Tensor
    sharpen: Tensor


def cosine_similarity(memory: Tensor, keys: Tensor) -> Tensor:
    """K[u, v] = u·v / (‖u‖‖v‖) of every key with every row: ``(B,N,W), (B,H,W) -> (B,H,N)``."""
    dots = keys @ memory.transpose(1, 2)
    norms = keys.norm(dim=-1, keepdim=True) * memory.norm(dim=-1).unsqueeze(1)
    return dots / (norms + EPS)


def content_weights(memory: Tensor, keys: Tensor, strength: Tensor | float = 1.0) -> Tensor:
    """Eq. 5: wᶜ(i) = exp(β K(k, Mᵢ)) / Σⱼ exp(β K(k, Mⱼ)); ``(B, H, N)``.

    ``strength`` is β, ``(B, H)`` or a number (Santoro et al.'s LRUA reads use β = 1)."""
    similarity = cosine_similarity(memory, keys)
    if isinstance(strength, Tensor):
        strength = strength.unsqueeze(-1)
    return torch.softmax(strength * similarity, dim=-1)


def interpolate(content: Tensor, previous: Tensor, gate: Tensor) -> Tensor:
    """Eq. 7: wᵍ = g wᶜ + (1 − g) wₜ₋₁; ``gate`` is ``(B, H)``."""
    g = gate.unsqueeze(-1)
    return g * content + (1 - g) * previous


def circular_shift(weights: Tensor, shift: Tensor) -> Tensor:
    """Eq. 8: w̃(i) = Σⱼ wᵍ(j) s(i − j), indices modulo N.

    ``shift`` ``(B, H, 2R + 1)`` gives the probability of the shifts −R … R (entry R is "stay").
    A one-hot shift permutes the rows (tested); a spread-out one blurs the weights, which
    :func:`sharpen` then undoes. Computed as one gather of the R-rolled copies of the weights.
    """
    n = weights.shape[-1]
    radius = (shift.shape[-1] - 1) // 2
    offsets = torch.arange(-radius, radius + 1, device=weights.device)
    # rolled[..., o, i] = w[(i - offset_o) mod N]: the weight that shift offset_o moves to row i.
    index = (torch.arange(n, device=weights.device).unsqueeze(0) - offsets.unsqueeze(1)) % n
    rolled = weights[..., index]  # (B, H, 2R+1, N)
    return (shift.unsqueeze(-1) * rolled).sum(dim=-2)


def sharpen(weights: Tensor, gamma: Tensor) -> Tensor:
    """Eq. 9: w(i) = w̃(i)^γ / Σⱼ w̃(j)^γ with γ ≥ 1, ``gamma`` ``(B, H)``."""
    powered = (weights + EPS) ** gamma.unsqueeze(-1)
    return powered / powered.sum(dim=-1, keepdim=True)


def address(memory: Tensor, previous: Tensor, head: HeadParams) -> Tensor:
    """The NTM's full addressing step (eqs. 5-9): ``(B, H, N)`` weights for ``H`` heads."""
    w = content_weights(memory, head.key, head.strength)
    w = interpolate(w, previous, head.gate)
    w = circular_shift(w, head.shift)
    return sharpen(w, head.sharpen)


def head_params(raw: Tensor, width: int, shift_range: int) -> HeadParams:
    """Split a controller's raw output ``(B, H, W + 2R + 4)`` into :class:`HeadParams` through
    the activations that keep each in its range: key tanh (bounded, like the memory the heads
    write), β softplus, g sigmoid, s softmax, γ 1 + softplus."""
    n_shift = 2 * shift_range + 1
    key, strength, gate, shift, gamma = raw.split([width, 1, 1, n_shift, 1], dim=-1)
    return HeadParams(
        key=torch.tanh(key),
        strength=F.softplus(strength.squeeze(-1)),
        gate=torch.sigmoid(gate.squeeze(-1)),
        shift=torch.softmax(shift, dim=-1),
        sharpen=1 + F.softplus(gamma.squeeze(-1)),
    )


def head_param_size(width: int, shift_range: int) -> int:
    """Numbers one head's :func:`head_params` consumes: key, β, g, shift, γ."""
    return width + 2 * shift_range + 4
