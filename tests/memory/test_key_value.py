"""The key-value memory against hand-computed reads, and its properties under hypothesis."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mnemeta.memory import key_value as kv


def _memory(keys: list[list[float]], values: list[list[float]], capacity: int) -> kv.KeyValueState:
    k = torch.tensor([keys], dtype=torch.float64)
    v = torch.tensor([values], dtype=torch.float64)
    state = kv.init_state(1, capacity, k.shape[-1], v.shape[-1], dtype=torch.float64)
    return kv.write(state, k, v)


def test_read_by_hand() -> None:
    state = _memory([[1.0, 0.0], [0.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]], capacity=2)
    # q = (1, 0): cosines 1 and 0; with β = ln 3 the weights are 3/4 and 1/4.
    value, weights = kv.read(
        state, torch.tensor([[[1.0, 0.0]]], dtype=torch.float64), strength=math.log(3.0)
    )
    torch.testing.assert_close(weights, torch.tensor([[[0.75, 0.25]]], dtype=torch.float64))
    torch.testing.assert_close(value, torch.tensor([[[1.5, 2.5]]], dtype=torch.float64))
    # q = (2, 2): both cosines 1/√2, equal weights whatever β; scale of q does not matter.
    value, weights = kv.read(state, torch.tensor([[[2.0, 2.0]]], dtype=torch.float64), strength=7.0)
    torch.testing.assert_close(weights, torch.tensor([[[0.5, 0.5]]], dtype=torch.float64))
    torch.testing.assert_close(value, torch.tensor([[[2.0, 3.0]]], dtype=torch.float64))


def test_per_query_strength() -> None:
    state = _memory([[1.0, 0.0], [0.0, 1.0]], [[1.0], [0.0]], capacity=2)
    q = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    value, _ = kv.read(state, q, strength=torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64))
    # β = 0: uniform (1/2); β = ln 3: e^β / (e^β + 1) = 3/4.
    torch.testing.assert_close(value[0, :, 0], torch.tensor([0.5, 0.75], dtype=torch.float64))


def test_unwritten_rows_get_no_weight() -> None:
    state = _memory([[1.0, 0.0]], [[5.0]], capacity=4)
    value, weights = kv.read(state, torch.tensor([[[0.0, 1.0]]], dtype=torch.float64))
    # Orthogonal query, cosine 0 everywhere, yet only the written row can be read.
    torch.testing.assert_close(weights, torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64))
    torch.testing.assert_close(value, torch.tensor([[[5.0]]], dtype=torch.float64))


def test_ring_buffer_overwrites_the_oldest() -> None:
    state = kv.init_state(1, 2, 1, 1, dtype=torch.float64)
    for i in range(3):  # rows 0, 1, 2: row 2 replaces row 0 in slot 0
        state = kv.write(
            state, torch.full((1, 1, 1), float(i + 1)), torch.full((1, 1, 1), 10.0 * i)
        )
    assert state.written == 3
    torch.testing.assert_close(
        state.values[0, :, 0], torch.tensor([20.0, 10.0], dtype=torch.float64)
    )
    at_once = kv.write(
        kv.init_state(1, 2, 1, 1, dtype=torch.float64),
        torch.tensor([[[1.0], [2.0], [3.0]]]),
        torch.tensor([[[0.0], [10.0], [20.0]]]),
    )
    torch.testing.assert_close(at_once.keys, state.keys)
    torch.testing.assert_close(at_once.values, state.values)


def test_write_does_not_mutate_and_is_differentiable() -> None:
    g = torch.Generator().manual_seed(0)
    d = torch.float64
    state = kv.init_state(2, 3, 4, 2, dtype=d)
    keys = torch.randn(2, 2, 4, generator=g, dtype=d, requires_grad=True)
    values = torch.randn(2, 2, 2, generator=g, dtype=d, requires_grad=True)
    query = torch.randn(2, 5, 4, generator=g, dtype=d)
    new = kv.write(state, keys, values)
    assert state.written == 0 and not state.keys.any()
    value, weights = kv.read(new, query, strength=3.0)
    value.sum().backward()
    # The read is Σⱼ wⱼ vⱼ, so d(Σ read)/d vⱼ is the weight row j drew, summed over queries
    # (and over the value's width); the rows went to slots 0 and 1 of 3.
    expected = weights.detach().sum(1)[:, :2, None].expand(2, 2, 2)
    assert values.grad is not None
    torch.testing.assert_close(values.grad, expected, rtol=0, atol=1e-12)
    # The keys' gradient through the cosine softmax, against finite differences.
    assert torch.autograd.gradcheck(
        lambda k: kv.read(kv.write(state, k, values.detach()), query, strength=3.0)[0],
        (keys.detach().requires_grad_(),),
    )


def test_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        kv.read(kv.init_state(1, 2, 3, 1), torch.ones(1, 1, 3))
    with pytest.raises(ValueError, match="capacity"):
        kv.init_state(1, 0, 3, 1)
    with pytest.raises(ValueError, match="disagree"):
        kv.write(kv.init_state(1, 2, 3, 1), torch.ones(1, 2, 3), torch.ones(1, 1, 1))


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    capacity=st.integers(1, 8),
    n=st.integers(1, 12),
    queries=st.integers(1, 4),
    strength=st.floats(0.0, 50.0),
    seed=st.integers(0, 2**16),
)
def test_weights_are_a_distribution_over_written_rows(
    batch: int, capacity: int, n: int, queries: int, strength: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    state = kv.write(
        kv.init_state(batch, capacity, 5, 3, dtype=torch.float64),
        torch.randn(batch, n, 5, generator=g, dtype=torch.float64),
        torch.randn(batch, n, 3, generator=g, dtype=torch.float64),
    )
    _, weights = kv.read(
        state, torch.randn(batch, queries, 5, generator=g, dtype=torch.float64), strength=strength
    )
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch, queries, dtype=torch.float64))
    assert (weights[..., min(n, capacity) :] == 0).all()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), target=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_sharp_write_then_read_of_the_same_key_returns_its_value(
    n: int, target: int, seed: int
) -> None:
    assume(target < n)
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(1, n, 8, generator=g, dtype=torch.float64)
    values = torch.randn(1, n, 4, generator=g, dtype=torch.float64)
    cos = (
        torch.nn.functional.normalize(keys[0], dim=-1)
        @ torch.nn.functional.normalize(keys[0], dim=-1).T
    )
    others = torch.cat([cos[target, :target], cos[target, target + 1 :]])
    # A read cannot tell apart keys pointing the same way; require a margin of 0.05 in cosine.
    assume(others.numel() == 0 or others.max() < 0.95)
    state = kv.write(kv.init_state(1, n, 8, 4, dtype=torch.float64), keys, values)
    value, weights = kv.read(state, keys[:, target : target + 1], strength=1000.0)
    # With β = 1000 and a margin of 0.05 the other rows weigh at most n·e^-50 together.
    torch.testing.assert_close(value[0, 0], values[0, target], rtol=0, atol=1e-12)
    assert weights[0, 0, target] > 1 - 1e-12


def test_key_value_state_follows_device_and_dtype() -> None:
    """The state after init, a write and a read on the asked device and of the asked dtype (meta
    runs on a CPU-only machine and fails on a CPU tensor as a GPU would; float64 shows a tensor
    made in the default float32): keys and values written in float32 are stored in the
    memory's dtype."""
    for device, dtype in [
        (torch.device("meta"), torch.float32),
        (torch.device("cpu"), torch.float64),
    ]:
        state = kv.init_state(2, 4, 3, 2, device=device, dtype=dtype)
        assert state.keys.shape == (2, 4, 3) and state.values.shape == (2, 4, 2)
        state = kv.write(
            state, torch.ones(2, 3, 3, device=device), torch.ones(2, 3, 2, device=device)
        )
        value, weights = kv.read(state, torch.ones(2, 1, 3, device=device, dtype=dtype))
        for x in (state.keys, state.values, value, weights):
            assert x.device == device and x.dtype == dtype, (device, dtype, x.device, x.dtype)
        assert state.written == 3 and weights.shape == (2, 1, 4)
    assert kv.init_state(1, 2, 3, 1).keys.dtype == torch.float32


def test_overflowing_write_counts_every_row() -> None:
    """``written`` is the number of rows written so far, not capped at the capacity: 3 + 7
    rows into 4 slots keep the last 4 (rows 6..9 at slots 2, 3, 0, 1) and count 10."""
    state = kv.init_state(1, 4, 1, 1, dtype=torch.float64)
    rows = torch.arange(10, dtype=torch.float64).view(1, 10, 1)
    state = kv.write(state, rows[:, :3], rows[:, :3])
    assert state.written == 3
    state = kv.write(state, rows[:, 3:], rows[:, 3:] * 10)
    assert state.written == 10
    assert state.keys.flatten().tolist() == [8.0, 9.0, 6.0, 7.0]
    assert state.values.flatten().tolist() == [80.0, 90.0, 60.0, 70.0]
    big = kv.write(kv.init_state(1, 4, 1, 1), rows[:, :7].float(), rows[:, :7].float())
    assert big.written == 7 and big.keys.flatten().tolist() == [4.0, 5.0, 6.0, 3.0]


def test_read_default_strength_is_one() -> None:
    """β = 1 unless given: weights are softmax of the cosines (1 and 0 for q = (1, 0) against
    rows (1, 0) and (0, 2)): e / (e + 1) and 1 / (e + 1)."""
    state = _memory([[1.0, 0.0], [0.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]], capacity=3)
    _, weights = kv.read(state, torch.tensor([[[1.0, 0.0]]], dtype=torch.float64))
    e = math.e
    want = torch.tensor([[[e / (e + 1), 1 / (e + 1), 0.0]]], dtype=torch.float64)
    # cosine's 1e-8 guard moves the first weight by ~1e-9
    torch.testing.assert_close(weights, want, rtol=0, atol=1e-8)


def test_read_of_empty_memory_is_an_error() -> None:
    with pytest.raises(ValueError, match="read from an empty key-value memory; write to it first"):
        kv.read(kv.init_state(1, 2, 3, 1), torch.ones(1, 1, 3))
