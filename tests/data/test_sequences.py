"""Copy-task batches and Santoro's one-shot episodes: layout, labels, presentation counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnemeta.data.glyphs import glyph_splits
from mnemeta.data.sequences import CopySampler, OneShotSequenceSampler, copy_batch
from mnemeta.errors import MnemetaError


def test_copy_batch_layout() -> None:
    b = copy_batch(3, 4, 8, generator=torch.Generator().manual_seed(0))
    assert b.inputs.shape == (3, 9, 9) and b.targets.shape == (3, 4, 8)
    torch.testing.assert_close(b.inputs[:, :4, :8], b.targets)
    assert (b.inputs[:, :4, 8] == 0).all() and (b.inputs[:, 4] == torch.eye(9)[8]).all()
    assert (b.inputs[:, 5:] == 0).all()  # blank while the network answers


def test_copy_sampler_lengths_and_state() -> None:
    s = CopySampler(min_length=2, max_length=5, seed=1)
    lengths = {s.sample(2).length for _ in range(60)}
    assert lengths == {2, 3, 4, 5}
    state = s.get_state()
    a = s.sample(2)
    s.set_state(state)
    assert torch.equal(a.inputs, s.sample(2).inputs)
    with pytest.raises(MnemetaError, match="min_length"):
        CopySampler(min_length=5, max_length=2)


@pytest.fixture(scope="module")
def glyphs():  # type: ignore[no-untyped-def]
    return glyph_splits(n_train=30, n_val=5, n_test=10, image_size=12)["train"]


@settings(max_examples=20, deadline=None)
@given(classes=st.integers(1, 6), instances=st.integers(1, 10), seed=st.integers(0, 999))
def test_one_shot_episodes(glyphs, classes: int, instances: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    sampler = OneShotSequenceSampler(glyphs, classes=classes, instances=instances, seed=seed)
    b = sampler.sample(4)
    steps = classes * instances
    assert b.images.shape == (4, steps, 144) and b.labels.shape == (4, steps)
    assert float(b.images.min()) >= 0 and float(b.images.max()) <= 1
    for e in range(4):
        counts = torch.bincount(b.labels[e], minlength=classes)
        assert (counts == instances).all()
        for label in range(classes):
            assert b.instance[e][b.labels[e] == label].tolist() == list(range(1, instances + 1))
    x = b.inputs(classes)
    assert x.shape == (4, steps, 144 + classes)
    assert (x[:, 0, 144:] == 0).all()  # no label before the first step
    torch.testing.assert_close(
        x[:, 1:, 144:], torch.nn.functional.one_hot(b.labels[:, :-1], classes).float()
    )


def test_one_shot_images_belong_to_their_label(glyphs) -> None:  # type: ignore[no-untyped-def]
    b = OneShotSequenceSampler(glyphs, classes=3, instances=4, seed=0).sample(2)
    flat = glyphs.images.flatten(2).float() / 255  # (classes, per_class, pixels)
    for e in range(2):
        owners = []
        for step in range(12):
            match = ((flat - b.images[e, step]).abs().amax(-1) < 1e-6).nonzero()
            owners.append(int(match[0, 0]))
        for label in range(3):
            labels = b.labels[e].tolist()
            assert len({o for o, y in zip(owners, labels, strict=True) if y == label}) == 1
        assert len(set(owners)) == 3


def test_fixed_episodes_ignore_training_state(glyphs) -> None:  # type: ignore[no-untyped-def]
    s = OneShotSequenceSampler(glyphs, classes=2, instances=3, seed=0)
    first = s.fixed_episodes(5, seed=3, batch_size=2)
    s.sample(7)
    again = s.fixed_episodes(5, seed=3, batch_size=2)
    assert [b.labels.shape[0] for b in first] == [2, 2, 1]
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, again, strict=True))


def test_one_shot_errors(glyphs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MnemetaError, match="instances"):
        OneShotSequenceSampler(glyphs, classes=2, instances=99)
    with pytest.raises(MnemetaError, match="classes"):
        OneShotSequenceSampler(glyphs, classes=999)
