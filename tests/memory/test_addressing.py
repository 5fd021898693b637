"""Addressing against values computed by hand from Graves et al. (2014), eqs. 5-9."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnemeta.memory.addressing import (
    HeadParams,
    address,
    circular_shift,
    content_weights,
    cosine_similarity,
    head_param_size,
    head_params,
    interpolate,
    sharpen,
)

D = torch.float64


def t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def test_content_weights_by_hand() -> None:
    memory = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)
    key = t([[[1.0, 0.0]]])  # (1, 1, 2)
    beta = 2.0
    # cosines: 1, 0, 1/sqrt(2); eq. 5: softmax of beta * cosine
    e = [math.exp(beta * 1.0), math.exp(0.0), math.exp(beta / math.sqrt(2))]
    expected = [v / sum(e) for v in e]
    got = content_weights(memory, key, t([[beta]]))
    torch.testing.assert_close(got[0, 0], t(expected))
    torch.testing.assert_close(cosine_similarity(memory, key)[0, 0], t([1, 0, 1 / math.sqrt(2)]))


def test_interpolation_by_hand() -> None:
    got = interpolate(t([[[0.5, 0.3, 0.2]]]), t([[[0.0, 1.0, 0.0]]]), t([[0.25]]))
    torch.testing.assert_close(got[0, 0], t([0.125, 0.825, 0.05]))


def test_shift_by_hand() -> None:
    w = t([[[0.1, 0.2, 0.3, 0.4]]])
    # s over offsets (-1, 0, +1); eq. 8: w~(i) = sum_j w(j) s(i - j), indices mod 4
    torch.testing.assert_close(
        circular_shift(w, t([[[0.0, 0.0, 1.0]]]))[0, 0], t([0.4, 0.1, 0.2, 0.3])
    )
    torch.testing.assert_close(
        circular_shift(w, t([[[1.0, 0.0, 0.0]]]))[0, 0], t([0.2, 0.3, 0.4, 0.1])
    )
    got = circular_shift(w, t([[[0.2, 0.5, 0.3]]]))[0, 0]
    # i=0: 0.5*w0 + 0.2*w1 + 0.3*w3 = 0.05 + 0.04 + 0.12, and so on
    torch.testing.assert_close(got, t([0.21, 0.19, 0.29, 0.31]))


def test_sharpen_by_hand() -> None:
    got = sharpen(t([[[0.5, 0.25, 0.25]]]), t([[2.0]]))
    torch.testing.assert_close(got[0, 0], t([2 / 3, 1 / 6, 1 / 6]), atol=1e-7, rtol=0)


def test_address_composes_the_four_steps() -> None:
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(2, 6, 4, generator=g, dtype=D)
    previous = torch.softmax(torch.randn(2, 3, 6, generator=g, dtype=D), -1)
    head = HeadParams(
        key=torch.randn(2, 3, 4, generator=g, dtype=D),
        strength=torch.rand(2, 3, generator=g, dtype=D) * 5,
        gate=torch.rand(2, 3, generator=g, dtype=D),
        shift=torch.softmax(torch.randn(2, 3, 3, generator=g, dtype=D), -1),
        sharpen=1 + torch.rand(2, 3, generator=g, dtype=D) * 3,
    )
    w = content_weights(memory, head.key, head.strength)
    w = sharpen(circular_shift(interpolate(w, previous, head.gate), head.shift), head.sharpen)
    torch.testing.assert_close(address(memory, previous, head), w)


def test_head_params_by_hand() -> None:
    # width 2, shift range 1: [key (2), β, g, shift (3), γ], each through its own activation
    raw = t([[[0.5, -1.0, 0.0, math.log(3.0), 0.0, math.log(2.0), 0.0, 1.0]]])
    p = head_params(raw, 2, 1)
    torch.testing.assert_close(p.key, t([[[math.tanh(0.5), math.tanh(-1.0)]]]))
    torch.testing.assert_close(p.strength, t([[math.log(2.0)]]))  # softplus(0) = ln 2
    torch.testing.assert_close(p.gate, t([[0.75]]))  # sigmoid(ln 3) = 3/4
    torch.testing.assert_close(p.shift, t([[[0.25, 0.5, 0.25]]]))  # softmax(0, ln 2, 0)
    torch.testing.assert_close(p.sharpen, t([[1.0 + math.log1p(math.e)]]))  # 1 + softplus(1)


def test_head_params_ranges() -> None:
    raw = torch.randn(3, 2, head_param_size(5, 2)) * 10
    p = head_params(raw, 5, 2)
    assert p.key.shape == (3, 2, 5) and p.shift.shape == (3, 2, 5)
    assert (p.key.abs() <= 1).all() and (p.strength >= 0).all()
    assert ((p.gate >= 0) & (p.gate <= 1)).all() and (p.sharpen >= 1).all()
    torch.testing.assert_close(p.shift.sum(-1), torch.ones(3, 2))


floats = st.floats(-3, 3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(2, 12),
    width=st.integers(1, 6),
    heads=st.integers(1, 3),
    seed=st.integers(0, 10_000),
    beta=st.floats(0, 50),
)
def test_weights_are_a_distribution(
    rows: int, width: int, heads: int, seed: int, beta: float
) -> None:
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(2, rows, width, generator=g)
    raw = torch.randn(2, heads, head_param_size(width, 1), generator=g) * 3
    previous = torch.softmax(torch.randn(2, heads, rows, generator=g), -1)
    for w in (
        content_weights(memory, raw[..., :width], beta),
        address(memory, previous, head_params(raw, width, 1)),
    ):
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(2, heads))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(3, 16), offset=st.integers(-2, 2), seed=st.integers(0, 10_000))
def test_one_hot_shift_is_a_permutation(rows: int, offset: int, seed: int) -> None:
    w = torch.rand(1, 2, rows, generator=torch.Generator().manual_seed(seed))
    s = torch.zeros(1, 2, 5)
    s[..., offset + 2] = 1.0
    shifted = circular_shift(w, s)
    torch.testing.assert_close(shifted, torch.roll(w, offset, dims=-1))
    torch.testing.assert_close(shifted.sort(-1).values, w.sort(-1).values)


def _cosines(memory: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """u·v / (‖u‖‖v‖ + 1e-8) for every key and row, by loops in float64 (the 1e-8 guard keeps
    a zero row finite; at 1e-12 its sign shows)."""
    out = torch.zeros(keys.shape[0], keys.shape[1], memory.shape[1], dtype=D)
    for b in range(keys.shape[0]):
        for h in range(keys.shape[1]):
            for i in range(memory.shape[1]):
                u, v = keys[b, h], memory[b, i]
                out[b, h, i] = (u @ v) / (u.norm() * v.norm() + 1e-8)
    return out


def test_cosine_similarity_float64_reference() -> None:
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(2, 5, 3, generator=g, dtype=D) * 0.01  # small norms: the guard shows
    keys = torch.randn(2, 2, 3, generator=g, dtype=D) * 0.01
    torch.testing.assert_close(
        cosine_similarity(memory, keys), _cosines(memory, keys), rtol=1e-12, atol=1e-14
    )
    zero = torch.zeros(1, 2, 3, dtype=D)  # a wiped row: cosine 0, not NaN
    assert (cosine_similarity(zero, keys[:1]) == 0).all()


def test_content_weights_default_strength_is_one() -> None:
    """β = 1 unless given (Santoro et al.'s LRUA reads): softmax of the plain cosines."""
    g = torch.Generator().manual_seed(1)
    memory = torch.randn(2, 5, 3, generator=g, dtype=D)
    keys = torch.randn(2, 2, 3, generator=g, dtype=D)
    want = torch.softmax(_cosines(memory, keys), dim=-1)
    torch.testing.assert_close(content_weights(memory, keys), want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        content_weights(memory, keys, 2.5), torch.softmax(2.5 * _cosines(memory, keys), -1)
    )


def test_circular_shift_on_the_weights_device() -> None:
    """The shift's index tensors are made on the weights' device (meta runs on a CPU-only
    machine; indexing a meta tensor with a CPU index tensor fails there as on a GPU)."""
    meta = torch.device("meta")
    w = torch.zeros(2, 3, 6, device=meta)
    s = torch.zeros(2, 3, 3, device=meta)
    out = circular_shift(w, s)
    assert out.device == meta and out.shape == (2, 3, 6)


def test_sharpen_of_exact_zeros_is_finite() -> None:
    """A one-hot weighting (exact zeros) with a non-integer γ stays finite and equals
    (w + 1e-8)^γ / Σ (w + 1e-8)^γ; without the guard, 0^γ is fine but w − 1e-8 < 0 is NaN."""
    w = t([[[0.0, 1.0, 0.0, 0.0]]])
    got = sharpen(w, t([[2.5]]))
    powered = (w + 1e-8) ** 2.5
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, powered / powered.sum(-1, keepdim=True), rtol=1e-12, atol=0)
