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


def _cosine_softmax(memory: torch.Tensor, keys: torch.Tensor, beta: float) -> torch.Tensor:
    """softmax_i(β · k·Mᵢ / (‖k‖‖Mᵢ‖ + 1e-8)) written with loops, float64 (Santoro et al.,
    eq. 2; the library's 1e-8 keeps a zero row finite and shows at 1e-10 here)."""
    b, h, n = keys.shape[0], keys.shape[1], memory.shape[1]
    out = torch.zeros(b, h, n, dtype=D)
    for i in range(b):
        for j in range(h):
            k = keys[i, j]
            logits = torch.stack(
                [
                    beta * (k @ memory[i, r]) / (k.norm() * memory[i, r].norm() + 1e-8)
                    for r in range(n)
                ]
            )
            out[i, j] = logits.exp() / logits.exp().sum()
    return out


def _state(seed: int = 0) -> lrua.LRUAState:
    g = torch.Generator().manual_seed(seed)
    s = lrua.init_state(2, 5, 3, heads=2, dtype=D)
    usage = torch.rand(2, 5, generator=g, dtype=D)
    return s._replace(
        memory=torch.randn(2, 5, 3, generator=g, dtype=D),
        usage=usage,
        read_weights=torch.softmax(torch.randn(2, 2, 5, generator=g, dtype=D), -1),
        least_used=lrua.least_used_weights(usage, 2),
    )


def test_lrua_read_uses_its_strength_and_defaults_to_one() -> None:
    """β = 1 by default (the paper's equation); another β scales every cosine."""
    s = _state()
    keys = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(1), dtype=D)
    for beta in (1.0, 3.0):
        values, weights = lrua.read(s, keys, beta) if beta != 1.0 else lrua.read(s, keys)
        want = _cosine_softmax(s.memory, keys, beta)
        torch.testing.assert_close(weights, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(values, want @ s.memory, rtol=1e-10, atol=1e-12)


def test_lrua_step_default_decay_and_strength() -> None:
    """One step from a used memory: usage = γ u + Σ_heads reads + Σ_heads writes with Santoro et
    al.'s γ = 0.95 by default, and the reads take the step's β."""
    s = _state()
    g = torch.Generator().manual_seed(2)
    keys = torch.randn(2, 2, 3, generator=g, dtype=D)
    gate = torch.randn(2, 2, generator=g, dtype=D)
    _, new, w_read, w_write = lrua.step(s, keys, gate)
    torch.testing.assert_close(
        new.usage, 0.95 * s.usage + w_read.sum(1) + w_write.sum(1), rtol=1e-12, atol=1e-12
    )
    written, _ = lrua.write(s, keys, gate)
    torch.testing.assert_close(
        w_read, _cosine_softmax(written.memory, keys, 1.0), rtol=1e-10, atol=1e-12
    )
    values3, new3, w_read3, _ = lrua.step(s, keys, gate, strength=3.0, decay=0.5)
    torch.testing.assert_close(
        w_read3, _cosine_softmax(written.memory, keys, 3.0), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(values3, w_read3 @ written.memory, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        new3.usage, 0.5 * s.usage + w_read3.sum(1) + w_write.sum(1), rtol=1e-12, atol=1e-12
    )


def test_lrua_init_state_has_one_head_by_default() -> None:
    s = lrua.init_state(2, 5, 3)
    assert s.read_weights.shape == (2, 1, 5) and s.least_used.shape == (2, 5)
    torch.testing.assert_close(s.least_used, torch.tensor([[1.0, 0, 0, 0, 0]] * 2))
    assert s.memory.dtype == torch.float32 and (s.usage == 0).all() and (s.read_weights == 0).all()


def test_least_used_ties_go_to_the_lowest_rows() -> None:
    """The docstring's tie rule (a fresh memory fills in row order) on a long row: a plain
    (unstable) sort of 2,000 entries with ties does not keep them in row order."""
    usage = torch.ones(2, 2000)
    usage[0, 1500:] = 0.5  # 500 tied smallest entries: rows 1500, 1501, 1502 win
    usage[1, ::7] = 0.0  # rows 0, 7, 14 win
    got = lrua.least_used_weights(usage, 3)
    assert got.sum(1).tolist() == [3.0, 3.0]
    assert got[0].nonzero().flatten().tolist() == [1500, 1501, 1502]
    assert got[1].nonzero().flatten().tolist() == [0, 7, 14]


def test_lrua_state_follows_device_and_dtype() -> None:
    """Every state tensor, and every output of a step, is on the asked device and of the asked
    dtype: meta runs on a CPU-only machine and a tensor made on the CPU by default fails there as
    on a GPU; float64 shows a tensor made in the default float32."""
    for device, dtype in [(torch.device("meta"), torch.float32), (torch.device("cpu"), D)]:
        s = lrua.init_state(2, 5, 3, heads=2, device=device, dtype=dtype)
        assert s.memory.shape == (2, 5, 3) and s.usage.shape == (2, 5)
        assert s.read_weights.shape == (2, 2, 5) and s.least_used.shape == (2, 5)
        keys = torch.zeros(2, 2, 3, device=device, dtype=dtype)
        gate = torch.zeros(2, 2, device=device, dtype=dtype)
        out = lrua.step(s, keys, gate)
        memory = lrua.LRUAMemory(lrua.LRUAConfig(rows=5, width=3, read_heads=2))
        m_state = memory.init_state(2, device, dtype)
        m_out = memory.step(m_state, torch.zeros(2, memory.raw_size, device=device, dtype=dtype))
        tensors = [*s, out[0], *out[1], out[2], out[3], *m_state, m_out[0], *m_out[1]]
        for x in tensors:
            assert x.device == device and x.dtype == dtype, (device, dtype, x.device, x.dtype)
