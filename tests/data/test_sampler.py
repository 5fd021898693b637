"""EpisodeSampler: shapes, label ranges, distinct draws, determinism, fixed episodes, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from mnemeta.data.classes import ClassImages, rotate_classes
from mnemeta.data.sampler import EpisodeSampler, check_episode_shape
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
        match="shots \\+ queries = 3 \\+ 4 = 7 but class '.*' of this split has only 5",
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


def test_default_seed_is_zero() -> None:
    data = _tagged(10, 5)
    default = EpisodeSampler(data, ways=3, shots=1, queries=1)
    zero = EpisodeSampler(data, ways=3, shots=1, queries=1, seed=0)
    one = EpisodeSampler(data, ways=3, shots=1, queries=1, seed=1)
    a, b, c = default.sample(8), zero.sample(8), one.sample(8)
    assert torch.equal(a.classes, b.classes) and torch.equal(a.support_x, b.support_x)
    assert not torch.equal(a.classes, c.classes)  # 8 tasks of 3 from 10: seeds do differ


def test_sample_defaults_to_one_episode() -> None:
    b = EpisodeSampler(_tagged(10, 5), ways=3, shots=2, queries=1).sample()
    assert b.support_x.shape == (1, 6, 1, 2, 2) and b.query_y.shape == (1, 3)
    assert b.n_way == 3 and b.classes.shape == (1, 3)


# Recorded from this implementation (seed 5 for sample, seed 3 for fixed_episodes) in both ways
# of drawing the classes: 3-way of 9 classes (ways² <= classes: draw with replacement and redraw
# repeats) and 4-way of 10 (ways² > classes: the smallest of uniform keys). A change here changes
# which episodes a seed gives, so recorded evaluations stop being comparable across versions;
# if it is deliberate (or PyTorch's CPU generator changes), re-record and say so in the notes.
PINNED = {
    (9, 3): {
        "classes": [[8, 3, 7], [3, 8, 7]],
        "support_drawings": [[2, 0, 4], [1, 2, 1]],
        "query_drawings": [[0, 3, 0], [4, 0, 5]],
        "fixed_0_99_100_249": [[8, 4, 6], [1, 2, 0], [2, 4, 7], [6, 7, 5]],
    },
    (10, 4): {
        "classes": [[8, 5, 1, 6], [8, 2, 1, 5]],
        "support_drawings": [[2, 4, 0, 4], [5, 3, 1, 2]],
        "query_drawings": [[5, 5, 5, 3], [3, 2, 5, 1]],
        "fixed_0_99_100_249": [[0, 6, 2, 7], [8, 1, 2, 6], [8, 1, 2, 7], [6, 5, 0, 1]],
    },
}


@pytest.mark.parametrize("n_classes,ways", sorted(PINNED))
def test_episode_stream_is_pinned(n_classes: int, ways: int) -> None:
    want = PINNED[(n_classes, ways)]
    sampler = EpisodeSampler(_tagged(n_classes, 6), ways=ways, shots=1, queries=1, seed=5)
    b = sampler.sample(2)
    assert b.classes.tolist() == want["classes"]
    assert _trace(b.support_x)[0].tolist() == want["classes"]
    assert _trace(b.support_x)[1].tolist() == want["support_drawings"]
    assert _trace(b.query_x)[1].tolist() == want["query_drawings"]
    # Past the first 100-episode chunk, whose generator is seeded from the chunk's start.
    classes = torch.cat([e.classes for e in sampler.fixed_episodes(250, seed=3)])
    assert classes[[0, 99, 100, 249]].tolist() == want["fixed_0_99_100_249"]


def test_fixed_episodes_past_one_chunk() -> None:
    """250 episodes (more than one 100-episode chunk): by default in batches of 100, 100, 50,
    and the same episodes whatever the batch size; the chunks differ from one another."""
    sampler = EpisodeSampler(_tagged(10, 5), ways=3, shots=1, queries=1)
    default = list(sampler.fixed_episodes(250, seed=0))
    assert [e.classes.shape[0] for e in default] == [100, 100, 50]
    small = list(sampler.fixed_episodes(250, seed=0, batch_size=64))
    assert [e.classes.shape[0] for e in small] == [64, 64, 64, 58]
    a = torch.cat([e.classes for e in default])
    assert torch.equal(a, torch.cat([e.classes for e in small]))
    assert torch.equal(
        torch.cat([e.query_x for e in default]), torch.cat([e.query_x for e in small])
    )
    assert not torch.equal(a[:100], a[100:200])


def test_episodes_on_the_sampler_device() -> None:
    """device='meta' runs on a CPU-only machine and shows a tensor left behind on the CPU as a
    GPU would: every tensor of the batch is on the device, and the gather indexes the images
    with indices already moved there (on CUDA a CPU index into CUDA images is an error)."""
    seen: list[tuple[torch.device, torch.device]] = []

    class IndexLog(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func.overloadpacket.__name__ == "index_select":
                seen.append((args[0].device, args[2].device))
            return func(*args, **(kwargs or {}))

    sampler = EpisodeSampler(_tagged(10, 5), ways=3, shots=1, queries=2, device="meta")
    meta = torch.device("meta")
    assert sampler.device == meta and sampler.data.images.device == meta
    with IndexLog():
        b = sampler.sample(2)
    for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
        assert getattr(b, name).device == meta, name
    assert seen == [(meta, meta), (meta, meta)]
    assert b.support_x.dtype == torch.float32 and b.support_y.shape == (2, 3)
    fixed = next(sampler.fixed_episodes(3, seed=0))
    assert fixed.classes.device == meta and fixed.query_y.device == meta


def test_pixels_scale_to_unit_range() -> None:
    images = torch.zeros(2, 2, 1, 2, 2, dtype=torch.uint8)
    images[..., 0, 0] = 255
    images[..., 0, 1] = 51  # 51 / 255 = 0.2
    sampler = EpisodeSampler(
        ClassImages.from_equal_classes(images, ["a", "b"]), ways=2, shots=1, queries=1
    )
    x = sampler.sample().support_x
    assert x.dtype == torch.float32
    # float32 rounding of 1/255 times 255 (one rounding each): within 1 ulp of 1.
    torch.testing.assert_close(x[..., 0, 0], torch.ones(1, 2, 1), rtol=0, atol=1.2e-7)
    torch.testing.assert_close(x[..., 0, 1], torch.full((1, 2, 1), 0.2), rtol=0, atol=1e-7)
    assert (x[..., 1, :] == 0).all()


def test_global_rng_untouched_with_many_ways() -> None:
    """ways² > classes (5-way of 10) takes the other draw path than the determinism test above:
    it too draws from the sampler's generator only."""
    data = _tagged(10, 5)
    a = EpisodeSampler(data, ways=5, shots=1, queries=1, seed=11)
    b = EpisodeSampler(data, ways=5, shots=1, queries=1, seed=11)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = a.sample(6)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)  # a moved global RNG must not change the sampler's draws
    assert torch.equal(first.classes, b.sample(6).classes)


def test_many_tasks_have_distinct_classes_and_uniform_frequencies() -> None:
    """2,000 tasks of 3-way from 10 classes (the redraw path): no task repeats a class, tasks
    differ, and each class appears 2000 * 3 / 10 = 600 times within 5 binomial sigmas
    (sd = sqrt(2000 * 0.3 * 0.7) = 20.5, so 600 +- 103), for the classes and for the drawings
    (1 of 4 per class for K + Q = 1, so 2000 * 3 / 4 = 1500 per drawing index, sd 33.5)."""
    sampler = EpisodeSampler(_tagged(10, 4), ways=3, shots=1, queries=0, seed=2)
    b = sampler.sample(2000)
    cls, draw = _trace(b.support_x)
    assert torch.equal(cls, b.classes)
    assert (cls.sort(dim=1).values.diff(dim=1) != 0).all()
    assert len({tuple(r) for r in cls.tolist()}) > 100
    counts = torch.bincount(cls.flatten(), minlength=10)
    assert ((counts - 600).abs() <= 103).all(), counts
    per_drawing = torch.bincount(draw.flatten(), minlength=4)
    assert ((per_drawing - 1500).abs() <= 168).all(), per_drawing


def test_bad_episode_shape_is_a_clear_error() -> None:
    data = _tagged(10, 5)
    for ways, shots, queries in [(0, 1, 1), (2, 0, 1), (2, 1, -1)]:
        with pytest.raises(
            MnemetaError,
            match=(
                "episodes need ways >= 1, shots >= 1 and queries >= 0; got "
                f"ways={ways}, shots={shots}, queries={queries}"
            ),
        ):
            EpisodeSampler(data, ways=ways, shots=shots, queries=queries)
    EpisodeSampler(data, ways=2, shots=1, queries=0)  # no queries is allowed


def test_errors_name_the_split() -> None:
    data = _tagged(10, 5)
    with pytest.raises(
        MnemetaError,
        match="20-way episodes need 20 classes but split 'background' has only 10; "
        "lower the ways or use a larger split",
    ):
        EpisodeSampler(data, ways=20, shots=1, queries=1, split="background")
    with pytest.raises(MnemetaError, match="of split 'val' has only 5 examples; lower shots"):
        EpisodeSampler(data, ways=2, shots=3, queries=4, split="val")
    with pytest.raises(MnemetaError, match="but this split has only 10; lower the ways"):
        check_episode_shape(data, ways=20, shots=1, queries=1)
