"""Synthetic handwritten-like glyphs: a few-shot image dataset that needs no download.

Used by ``mnemeta demo`` and the tests, never for published numbers. Each class is a
"character" of a few random quadratic Bézier strokes; each of its drawings perturbs the control
points and shifts the whole glyph, so that, as in Omniglot, examples of one class vary and the
classes of a split are disjoint. Rendering is vectorised: a stroke is a chain of points, and a
pixel's ink is the largest Gaussian blob of the points near it.
"""

from __future__ import annotations

import functools

import torch

from mnemeta.data.classes import ClassImages


def make_glyphs(
    n_classes: int = 1000,
    per_class: int = 20,
    *,
    image_size: int = 28,
    strokes: int = 3,
    jitter: float = 1.2,
    seed: int = 0,
) -> ClassImages:
    """``n_classes`` glyph classes of ``per_class`` drawings, uint8 ``(n, per_class, 1, S, S)``.

    Args:
        jitter: standard deviation, in pixels, of each control point in each drawing; larger
            makes drawings of one class less alike.
        seed: the same seed gives the same dataset, bit for bit, on any machine.
    """
    g = torch.Generator().manual_seed(seed)
    f32 = torch.float32  # rendered in float32 whatever the default dtype: the same bits always
    s = float(image_size)
    # Class prototypes: (classes, strokes, 3 control points, xy), inside the central 70%.
    controls = 0.15 * s + 0.7 * s * torch.rand(n_classes, strokes, 3, 2, generator=g, dtype=f32)
    drawn = controls.unsqueeze(1) + jitter * torch.randn(
        n_classes, per_class, strokes, 3, 2, generator=g, dtype=f32
    )
    drawn = drawn + 1.5 * torch.randn(n_classes, per_class, 1, 1, 2, generator=g, dtype=f32)
    t = torch.linspace(0.0, 1.0, 24, dtype=f32).view(1, 1, 1, -1, 1)
    p0, p1, p2 = drawn[..., 0:1, :], drawn[..., 1:2, :], drawn[..., 2:3, :]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (C, P, strokes, 24, 2)
    points = points.reshape(n_classes * per_class, -1, 2)
    axis = torch.arange(image_size, dtype=torch.float32) + 0.5
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(1, -1, 2)
    images = []
    for chunk in torch.split(points, 2048):
        d2 = torch.cdist(grid.expand(chunk.shape[0], -1, -1), chunk).square()  # (n, pixels, pts)
        ink = torch.exp(-d2.min(dim=-1).values / (2 * 0.8**2))
        images.append((ink * 255).round().to(torch.uint8))
    pixels = torch.cat(images).reshape(n_classes, per_class, 1, image_size, image_size)
    return ClassImages.from_equal_classes(pixels, [f"glyph{i:05d}" for i in range(n_classes)])


@functools.lru_cache(maxsize=4)  # pure function of its arguments; rendering takes seconds
def glyph_splits(
    n_train: int = 800, n_val: int = 100, n_test: int = 200, *, image_size: int = 28, seed: int = 0
) -> dict[str, ClassImages]:
    """Disjoint train / val / test classes of :func:`make_glyphs` (``trainval`` = train + val)."""
    data = make_glyphs(n_train + n_val + n_test, image_size=image_size, seed=seed)
    names = data.names
    train, val = names[:n_train], names[n_train : n_train + n_val]
    return {
        "train": data.subset(train),
        "val": data.subset(val),
        "trainval": data.subset(train + val),
        "test": data.subset(names[n_train + n_val :]),
    }
