"""LRUA against Santoro et al. (2016), §3.1, by hand (one and two heads); hypothesis properties
of usage."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnemeta.memory import lrua

D = torch.float64


def t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def test_one_step_by_hand() -> None:
    state = lrua.LRUAState(
        memory=t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]]),
        usage=t([[0.5, 0.1, 0.9, 0.3]]),
        read_weights=t([[[0.0, 0.0, 1.0, 0.0]]]),
        least_used=t([[0.0, 1.0, 0.0, 0.0]]),
    )
    key = t([[[1.0, 2.0]]])
    values, new, w_read, w_write = lrua.step(state, key, t([[0.0]]), decay=0.9)
    # 1. sigma(0) = 0.5: half on the last read row (2), half on the last least-used row (1)
    torch.testing.assert_close(w_write[0, 0], t([0.0, 0.5, 0.5, 0.0]))
    # 2.-3. row 1 (least used before the step, usage 0.1) is zeroed, then the key is added
    memory = t([[1.0, 0.0], [0.5, 1.0], [1.5, 2.0], [2.0, 0.0]])
    torch.testing.assert_close(new.memory[0], memory)
    # 4. read weights: softmax of cosines with beta = 1
    cos = [(r[0] * 1 + r[1] * 2) / (math.hypot(*r) * math.sqrt(5)) for r in memory.tolist()]
    e = [math.exp(c) for c in cos]
    expected_w = t([v / sum(e) for v in e])
    torch.testing.assert_close(w_read[0, 0], expected_w)
    # 5. read vector
    torch.testing.assert_close(values[0, 0], expected_w @ memory)
    # 6. usage = gamma * usage + reads + writes
    usage = 0.9 * t([0.5, 0.1, 0.9, 0.3]) + expected_w + t([0.0, 0.5, 0.5, 0.0])
    torch.testing.assert_close(new.usage[0], usage)
    # 7. least used: the n = 1 smallest usage
    expected_lu = torch.zeros(4, dtype=D)
    expected_lu[usage.argmin()] = 1.0
    torch.testing.assert_close(new.least_used[0], expected_lu)
    torch.testing.assert_close(new.read_weights, w_read)


def _reference_read_weights(memory: list[list[float]], key: list[float]) -> list[float]:
    """softmax over rows of the cosine of ``key`` with each row (β = 1), in plain floats; the
    norms' product carries the library's 1e-8 (addressing.EPS, which keeps a zero row finite)."""
    norm_k = math.hypot(*key)
    cos = [(r[0] * key[0] + r[1] * key[1]) / (math.hypot(*r) * norm_k + 1e-8) for r in memory]
    e = [math.exp(c) for c in cos]
    return [v / sum(e) for v in e]


def test_two_heads_by_hand_zero_only_the_lowest_usage_row() -> None:
    # Two heads, so the last wˡᵘ has two ones (rows 1 and 3, the two smallest usages), but
    # "prior to writing", only the least-used row (1, usage 0.2) is zeroed: row 3 keeps [2, 0].
    state = lrua.LRUAState(
        memory=t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 2.0]]]),
        usage=t([[0.6, 0.2, 0.9, 0.4, 0.7]]),
        read_weights=t([[[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]]),
        least_used=t([[0.0, 1.0, 0.0, 1.0, 0.0]]),
    )
    keys = t([[[1.0, 2.0], [0.0, 1.0]]])
    gates = t([[0.0, math.log(3.0)]])  # σ = 1/2 and 3/4
    values, new, w_read, w_write = lrua.step(state, keys, gates, decay=0.9)
    # 1. head 0: ½ on its last read row 2, ½ on each least-used row; head 1: ¾ on row 4, ¼ ...
    write_weights = [[0.0, 0.5, 0.5, 0.5, 0.0], [0.0, 0.25, 0.0, 0.25, 0.75]]
    torch.testing.assert_close(w_write[0], t(write_weights), rtol=0, atol=1e-15)
    # 2.-3. row 1 zeroed, then Σₕ wʷₕ(i) kₕ added: row 3 = [2, 0] + ½[1, 2] + ¼[0, 1]
    memory = [[1.0, 0.0], [0.5, 1.25], [1.5, 2.0], [2.5, 1.25], [0.0, 2.75]]
    torch.testing.assert_close(new.memory[0], t(memory), rtol=0, atol=1e-15)
    # 4.-5. each head reads with its own key
    reads = [_reference_read_weights(memory, k) for k in ([1.0, 2.0], [0.0, 1.0])]
    torch.testing.assert_close(w_read[0], t(reads), rtol=0, atol=1e-12)
    torch.testing.assert_close(values[0], t(reads) @ t(memory), rtol=0, atol=1e-12)
    # 6. usage: γ wᵘ + the reads of both heads summed + the writes of both heads summed
    usage = [
        0.9 * u + reads[0][i] + reads[1][i] + write_weights[0][i] + write_weights[1][i]
        for i, u in enumerate([0.6, 0.2, 0.9, 0.4, 0.7])
    ]
    torch.testing.assert_close(new.usage[0], t(usage), rtol=0, atol=1e-12)
    # 7. usage is now ≈ [0.774, 1.415, 1.762, 1.457, 1.861]: rows 0 and 1 are the least used
    torch.testing.assert_close(new.least_used[0], t([1.0, 1.0, 0.0, 0.0, 0.0]))


def test_init_state_and_fill_order() -> None:
    s = lrua.init_state(2, 6, 3, heads=2)
    assert s.memory.shape == (2, 6, 3) and s.read_weights.shape == (2, 2, 6)
    torch.testing.assert_close(s.least_used, t([[1, 1, 0, 0, 0, 0]] * 2).float())


def test_least_used_picks_the_n_smallest() -> None:
    got = lrua.least_used_weights(t([[0.3, 0.1, 0.7, 0.2, 0.9]]), 2)
    torch.testing.assert_close(got, t([[0.0, 1.0, 0.0, 1.0, 0.0]]))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(2, 12),
    heads=st.integers(1, 3),
    decay=st.floats(0, 1),
    seed=st.integers(0, 9999),
)
def test_usage_decays_as_specified(rows: int, heads: int, decay: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    usage = torch.rand(1, rows, generator=g, dtype=D) * 3
    state = lrua.init_state(1, rows, 2, heads=heads, dtype=D)._replace(usage=usage)
    none = torch.zeros(1, heads, rows, dtype=D)
    new = lrua.update_usage(state, none, none, decay)
    torch.testing.assert_close(new.usage, decay * usage)
    # ... and with reads and writes, it grows by exactly their sums
    w_r = torch.softmax(torch.randn(1, heads, rows, generator=g, dtype=D), -1)
    w_w = torch.rand(1, heads, rows, generator=g, dtype=D)
    new = lrua.update_usage(state, w_r, w_w, decay)
    torch.testing.assert_close(new.usage, decay * usage + w_r.sum(1) + w_w.sum(1))
    assert int(new.least_used.sum()) == min(heads, rows)
    # every least-used row has usage no larger than every other row
    lu = new.least_used[0].bool()
    if (~lu).any():
        assert new.usage[0][lu].max() <= new.usage[0][~lu].min()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(2, 12), heads=st.integers(1, 4), seed=st.integers(0, 9999))
def test_read_weights_are_a_distribution(rows: int, heads: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    state = lrua.init_state(2, rows, 3, heads=heads)
    keys = torch.randn(2, heads, 3, generator=g)
    for _ in range(3):
        _, state, w_read, w_write = lrua.step(state, keys, torch.randn(2, heads, generator=g))
        assert (w_read >= 0).all() and (w_write >= 0).all()
        torch.testing.assert_close(w_read.sum(-1), torch.ones(2, heads))
