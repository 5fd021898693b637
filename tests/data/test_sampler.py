"""EpisodeSampler: shapes, label ranges, distinct draws, determinism, fixed episodes, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnemeta.data.classes import ClassImages, rotate_classes
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.errors import MnemetaError


def _tagged(n_classes: int, per_class: int, counts: list[int] | None = None) -> ClassImages:
    """Images whose pixels encode (class, drawing), so every draw can be traced back."""
    images = torch.zeros(n_classes, per_class, 1, 2, 2, dtype=torch.uint8)
    images[:, :, 0, 0, 0] = torch.arange(n_classes).view(-1, 1).to(torch.uint8)
    images[:, :, 0, 0, 1] = torch.arange(per_class).view(1, -1).to(torch.uint8)
    c = torch.tensor(counts) if counts else torch.full((n_classes,), per_class)
    return ClassImages(images, c, tuple(f"c{i}" for i in range(n_classes)))


def _trace(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = (x * 255).round().long()
    return pixels[..., 0, 0, 0], pixels[..., 0, 0, 1]  # class, drawing


@st.composite
def episode_shapes(draw: st.DrawFn) -> tuple[list[int], int, int, int, int]:
    """(drawings per class, ways, shots, queries, tasks), valid by construction: ways at most
    the classes, shots + queries at most the smallest class (classes may differ in size)."""
    n_classes = draw(st.integers(2, 12))
    smallest = draw(st.integers(2, 8))
    counts = draw(st.lists(st.integers(smallest, 8), min_size=n_classes, max_size=n_classes))
    counts[draw(st.integers(0, n_classes - 1))] = smallest
    ways = draw(st.integers(1, n_classes))
    shots = draw(st.integers(1, min(4, smallest)))
    queries = draw(st.integers(0, min(4, smallest - shots)))
    return counts, ways, shots, queries, draw(st.integers(1, 3))


@settings(max_examples=40, deadline=None)
@given(shape=episode_shapes(), seed=st.integers(0, 2**31))
def test_episodes_are_well_formed(shape: tuple[list[int], int, int, int, int], seed: int) -> None:
    counts, ways, shots, queries, tasks = shape
    data = _tagged(len(counts), max(counts), counts)
    sampler = EpisodeSampler(data, ways=ways, shots=shots, queries=queries, seed=seed)
    b = sampler.sample(tasks)
    assert b.support_x.shape == (tasks, ways * shots, 1, 2, 2)
    assert b.query_x.shape == (tasks, ways * queries, 1, 2, 2)
    # labels 0..N-1, each repeated K (Q) times in a row
    labels = torch.arange(ways)
    assert torch.equal(b.support_y, labels.repeat_interleave(shots).expand(tasks, -1))
    assert torch.equal(b.query_y, labels.repeat_interleave(queries).expand(tasks, -1))
    s_cls, s_draw = _trace(b.support_x)
    q_cls, q_draw = _trace(b.query_x)
    # never a padding slot of a smaller class
    assert (s_draw < data.counts[s_cls]).all() and (q_draw < data.counts[q_cls]).all()
    for t in range(tasks):
        # one class per label, distinct classes per episode
        label_class: dict[int, int] = {}
        for cls, lab in zip(
            torch.cat([s_cls[t], q_cls[t]]).tolist(),
            torch.cat([b.support_y[t], b.query_y[t]]).tolist(),
            strict=True,
        ):
            assert label_class.setdefault(lab, cls) == cls
        assert len(set(label_class.values())) == ways
        # no drawing used twice within an episode
        classes = torch.cat([s_cls[t], q_cls[t]]).tolist()
        pairs = list(zip(classes, torch.cat([s_draw[t], q_draw[t]]).tolist(), strict=True))
        assert len(set(pairs)) == len(pairs)


def test_unequal_class_sizes_never_draw_padding() -> None:
    data = _tagged(6, 10, counts=[3, 10, 3, 10, 3, 10])
    sampler = EpisodeSampler(data, ways=6, shots=1, queries=2, seed=0)
    cls, draw = _trace(torch.cat([sampler.sample(50).support_x, sampler.sample(50).query_x], 1))
    assert (draw < data.counts[cls]).all()


def test_same_seed_same_episodes_and_state_restores() -> None:
    data = _tagged(10, 5)
    a = EpisodeSampler(data, ways=3, shots=1, queries=1, seed=7)
    b = EpisodeSampler(data, ways=3, shots=1, queries=1, seed=7)
    assert torch.equal(a.sample(4).support_x, b.sample(4).support_x)
    state = a.get_state()
    first = a.sample(2).query_x
    a.set_state(state)
    assert torch.equal(a.sample(2).query_x, first)


def test_fixed_episodes_repeat_and_do_not_move_the_training_stream() -> None:
    data = _tagged(10, 5)
    s = EpisodeSampler(data, ways=3, shots=1, queries=2, seed=0)
    ref = EpisodeSampler(data, ways=3, shots=1, queries=2, seed=0)
    one = torch.cat([b.query_x for b in s.fixed_episodes(7, seed=3, batch_size=3)])
    two = torch.cat([b.query_x for b in s.fixed_episodes(7, seed=3, batch_size=7)])
    assert one.shape[0] == 7 and torch.equal(one, two)
    assert torch.equal(s.sample(2).support_x, ref.sample(2).support_x)


def test_too_many_ways_is_a_clear_error() -> None:
    with pytest.raises(
        MnemetaError, match="20-way episodes need 20 classes but this split has only 10"
    ):
        EpisodeSampler(_tagged(10, 5), ways=20, shots=1, queries=1)


def test_too_many_shots_and_queries_is_a_clear_error() -> None:
    with pytest.raises(
        MnemetaError,
        match="shots \\+ queries = 3 \\+ 4 = 7 but some classes of this split have only 5",
    ):
        EpisodeSampler(_tagged(10, 5), ways=2, shots=3, queries=4)


def test_rotations_become_classes() -> None:
    data = ClassImages.from_equal_classes(
        torch.arange(2 * 1 * 1 * 2 * 2, dtype=torch.uint8).view(2, 1, 1, 2, 2), ["a", "b"]
    )
    rot = rotate_classes(data)
    assert rot.names[:4] == ("a/rot000", "a/rot090", "a/rot180", "a/rot270")
    assert torch.equal(rot.images[1], torch.rot90(data.images[0], 1, dims=(-2, -1)))
    assert torch.equal(rot.images[6], torch.rot90(data.images[1], 2, dims=(-2, -1)))
