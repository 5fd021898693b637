"""NTM read and write against Graves et al. (2014), eqs. 2-4, by hand; state in, state out."""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mnemeta.memory import ntm
from mnemeta.memory.addressing import HeadParams, content_weights

D = torch.float64


def t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def test_read_by_hand() -> None:
    memory = t([[[1.0, 2.0], [3.0, 4.0]]])
    torch.testing.assert_close(ntm.read_memory(memory, t([[[0.25, 0.75]]])), t([[[2.5, 3.5]]]))


def test_write_by_hand() -> None:
    memory = t([[[1.0, 2.0], [3.0, 4.0]]])
    # one head on row 0, erase the first column, add (5, 6)
    got = ntm.write_memory(memory, t([[[1.0, 0.0]]]), t([[[1.0, 0.0]]]), t([[[5.0, 6.0]]]))
    torch.testing.assert_close(got, t([[[5.0, 8.0], [3.0, 4.0]]]))
    # half on each row, erase everything, add nothing: every entry halves
    got = ntm.write_memory(memory, t([[[0.5, 0.5]]]), t([[[1.0, 1.0]]]), t([[[0.0, 0.0]]]))
    torch.testing.assert_close(got, memory / 2)
    # two heads erasing half of entry (0, 0) each: the erasures multiply, 1 * 0.5 * 0.5
    two = ntm.write_memory(
        memory,
        t([[[1.0, 0.0], [1.0, 0.0]]]),
        t([[[0.5, 0.0], [0.5, 0.0]]]),
        torch.zeros(1, 2, 2, dtype=D),
    )
    torch.testing.assert_close(two, t([[[0.25, 2.0], [3.0, 4.0]]]))


def test_init_state_is_the_wipe() -> None:
    s = ntm.init_state(3, 8, 4, read_heads=2, write_heads=1)
    assert s.memory.shape == (3, 8, 4) and s.read_weights.shape == (3, 2, 8)
    assert (s.read_weights[..., 0] == 1).all() and (s.write_weights.sum(-1) == 1).all()
    # content weights of a wiped memory are defined (uniform), not NaN
    w = content_weights(s.memory, torch.randn(3, 2, 4), 5.0)
    torch.testing.assert_close(w, torch.full_like(w, 1 / 8))


def test_read_write_are_pure() -> None:
    s = ntm.init_state(1, 4, 2, dtype=D)
    before = s.memory.clone()
    head = HeadParams(t([[[1.0, 0.0]]]), t([[1.0]]), t([[1.0]]), t([[[0.0, 1.0, 0.0]]]), t([[1.0]]))
    new = ntm.write(s, head, t([[[1.0, 1.0]]]), t([[[1.0, 1.0]]]))
    assert torch.equal(s.memory, before) and not torch.equal(new.memory, before)
    value, weights = ntm.read(new, head)
    assert value.shape == (1, 1, 2) and weights.shape == (1, 1, 4)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(2, 10),
    width=st.integers(2, 8),
    row=st.integers(0, 9),
    seed=st.integers(0, 9999),
)
def test_sharp_write_then_read_returns_the_value(
    rows: int, width: int, row: int, seed: int
) -> None:
    row = row % rows
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(1, rows, width, generator=g, dtype=D)
    value = torch.randn(1, 1, width, generator=g, dtype=D)
    at = torch.zeros(1, 1, rows, dtype=D)
    at[..., row] = 1.0
    written = ntm.write_memory(memory, at, torch.ones(1, 1, width, dtype=D), value)
    torch.testing.assert_close(ntm.read_memory(written, at), value)
    # ... and by content: the written value as the key, a large key strength
    others = torch.cat([written[0, :row], written[0, row + 1 :]])
    cos = torch.nn.functional.cosine_similarity(others, value[0], dim=-1)
    assume(bool((cos < 0.9).all()))
    w = content_weights(written, value, 500.0)
    torch.testing.assert_close(ntm.read_memory(written, w), value, atol=1e-6, rtol=1e-6)


def test_init_state_shapes_with_several_write_heads() -> None:
    """write_heads=2: each write head starts on row 0 too, one weighting per head."""
    s = ntm.init_state(2, 5, 3, read_heads=1, write_heads=2)
    assert s.write_weights.shape == (2, 2, 5) and s.read_weights.shape == (2, 1, 5)
    one_hot = t([1.0, 0.0, 0.0, 0.0, 0.0]).float()
    assert torch.equal(s.write_weights, one_hot.expand(2, 2, 5))
    assert torch.equal(s.read_weights, one_hot.expand(2, 1, 5))
    default = ntm.init_state(2, 5, 3)
    assert default.read_weights.shape == default.write_weights.shape == (2, 1, 5)
    assert default.memory.dtype == torch.float32


def test_ntm_state_follows_device_and_dtype() -> None:
    """Every state tensor and every output of a step on the asked device and of the asked
    dtype: meta runs on a CPU-only machine and a tensor made on the CPU by default fails there
    as on a GPU; float64 shows a tensor made in the default float32."""
    memory = ntm.NTMMemory(ntm.NTMMemoryConfig(rows=5, width=3, read_heads=2, write_heads=2))
    for device, dtype in [(torch.device("meta"), torch.float32), (torch.device("cpu"), D)]:
        s = ntm.init_state(2, 5, 3, read_heads=2, write_heads=2, device=device, dtype=dtype)
        m_state = memory.init_state(2, device, dtype)
        assert m_state.read_weights.shape == m_state.write_weights.shape == (2, 2, 5)
        reads, new, w_read, w_write = memory.step(
            m_state, torch.zeros(2, memory.raw_size, device=device, dtype=dtype)
        )
        assert new.read_weights.shape == (2, 2, 5) and reads.shape == (2, 6)
        for x in [*s, *m_state, reads, *new, w_read, w_write]:
            assert x.device == device and x.dtype == dtype, (device, dtype, x.device, x.dtype)
