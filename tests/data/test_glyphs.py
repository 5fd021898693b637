from __future__ import annotations

import torch

from mnemeta.data.glyphs import glyph_splits, make_glyphs


def test_glyphs_are_deterministic_and_vary_within_a_class() -> None:
    a, b = make_glyphs(5, 4, seed=3), make_glyphs(5, 4, seed=3)
    assert torch.equal(a.images, b.images)
    assert a.images.shape == (5, 4, 1, 28, 28) and a.images.dtype == torch.uint8
    assert not torch.equal(a.images[0, 0], a.images[0, 1])  # drawings differ
    assert a.images.float().mean() > 5  # there is ink


def test_splits_are_disjoint() -> None:
    s = glyph_splits(6, 2, 3, image_size=16)
    assert set(s["train"].names).isdisjoint(s["test"].names)
    assert s["trainval"].n_classes == 8 and s["test"].n_classes == 3
