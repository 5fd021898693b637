"""A class-indexed image dataset held as one uint8 tensor.

Every few-shot image dataset in mnemeta (Omniglot, the synthetic glyphs of the demo, a user's
own folder of classes) ends up as a :class:`ClassImages`: all pixels in one
``(n_classes, max_per_class, channels, height, width)`` uint8 tensor plus a per-class count.
Episodes are then drawn by tensor indexing on the target device (see
:mod:`mnemeta.data.sampler`); there is no per-item Python loop and no DataLoader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.errors import ConfigError, DataError


@dataclass(frozen=True)
class ClassImages:
    """Images grouped by class.

    Attributes:
        images: uint8 ``(n_classes, max_per_class, C, H, W)``; rows past a class's count
            are padding.
        counts: int64 ``(n_classes,)``, the number of real images of each class.
        names: one name per class, e.g. ``"Angelic/character01/rot090"``.
    """

    images: Tensor
    counts: Tensor
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 5:
            raise DataError(
                f"ClassImages.images must be uint8 (classes, per_class, C, H, W); got "
                f"{self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if self.counts.shape != (n,) or len(self.names) != n:
            raise DataError(
                f"ClassImages has {n} classes but {tuple(self.counts.shape)} counts and "
                f"{len(self.names)} names"
            )

    @property
    def n_classes(self) -> int:
        return int(self.images.shape[0])

    @property
    def min_count(self) -> int:
        return int(self.counts.min()) if self.n_classes else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[2:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device | str) -> ClassImages:
        return ClassImages(self.images.to(device), self.counts.to(device), self.names)

    def subset(self, names: Sequence[str]) -> ClassImages:
        """The classes named in ``names``, in that order."""
        index = {name: i for i, name in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(
                f"{len(missing)} class(es) of the split are not in the data, e.g. {missing[0]!r}; "
                "check that the data folder holds the complete dataset"
            )
        rows = torch.tensor([index[n] for n in names], dtype=torch.long)
        return ClassImages(
            self.images[rows.to(self.images.device)],
            self.counts[rows.to(self.counts.device)],
            tuple(names),
        )

    @staticmethod
    def from_equal_classes(images: Tensor, names: Sequence[str]) -> ClassImages:
        """Wrap a ``(n_classes, per_class, C, H, W)`` tensor of equally sized classes."""
        counts = torch.full((images.shape[0],), images.shape[1], dtype=torch.long)
        return ClassImages(images, counts, tuple(names))


def rotate_classes(data: ClassImages, degrees: Sequence[int] = (0, 90, 180, 270)) -> ClassImages:
    """Each class once per rotation, as a new class (Santoro et al. 2016; Vinyals et al. 2016).

    Rotated copies of a character are treated as *different* classes; the names get a
    ``/rotDDD`` suffix, matching the lines of the Vinyals split files.
    """
    blocks: list[Tensor] = []
    names: list[str] = []
    for deg in degrees:
        if deg % 90:
            raise ConfigError(f"rotations must be multiples of 90 degrees; got {deg}")
        # rot90 counter-clockwise k times, as torchvision's and Snell's loaders do.
        blocks.append(torch.rot90(data.images, k=deg // 90, dims=(-2, -1)))
        names.extend(f"{n}/rot{deg:03d}" for n in data.names)
    order = [j * data.n_classes + i for i in range(data.n_classes) for j in range(len(degrees))]
    rows = torch.tensor(order, dtype=torch.long)
    images = torch.cat(blocks)[rows]
    counts = data.counts.repeat(len(degrees))[rows]
    return ClassImages(images.contiguous(), counts, tuple(names[i] for i in order))
