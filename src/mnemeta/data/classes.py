"""A class-indexed dataset held as one tensor: images (uint8), features (float) or token ids.

Every few-shot image dataset in mnemeta (Omniglot, the synthetic glyphs of the demo, a user's
own folder of classes) ends up as a :class:`ClassImages`: all pixels in one
``(n_classes, max_per_class, channels, height, width)`` uint8 tensor plus a per-class count.
Text data sets are the same table over sentence embeddings: ``(n_classes, max_per_class, dim)``
float32, one row per utterance (:mod:`mnemeta.data.text_classes`), or the utterances' token ids,
``(n_classes, max_per_class, seq_len)`` int64, for a backbone that runs the encoder itself.
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
    """Examples grouped by class: images, feature vectors such as sentence embeddings, or
    token ids.

    Attributes:
        images: uint8 ``(n_classes, max_per_class, C, H, W)`` images, float32
            ``(n_classes, max_per_class, *shape)`` features (e.g. ``(..., 384)`` embeddings), or
            int64 ``(n_classes, max_per_class, seq_len)`` token ids (right-padded); rows past a
            class's count are padding.
        counts: int64 ``(n_classes,)``, the number of real images of each class.
        names: one name per class, e.g. ``"Angelic/character01/rot090"``.
    """

    images: Tensor
    counts: Tensor
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        images = self.images.dtype == torch.uint8 and self.images.dim() == 5
        features = self.images.dtype == torch.float32 and self.images.dim() >= 3
        tokens = self.images.dtype == torch.int64 and self.images.dim() == 3
        if not (images or features or tokens):
            raise DataError(
                f"ClassImages.images must be uint8 (classes, per_class, C, H, W), float32 "
                f"(classes, per_class, *features) or int64 (classes, per_class, seq_len) token "
                f"ids; got {self.images.dtype} with shape {tuple(self.images.shape)}"
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
    def example_shape(self) -> tuple[int, ...]:
        """The shape of one example: ``(C, H, W)`` for images, ``(dim,)`` for embeddings,
        ``(seq_len,)`` for token ids."""
        return tuple(int(s) for s in self.images.shape[2:])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one example (the name from when every example was an image)."""
        return self.example_shape

    @property
    def is_features(self) -> bool:
        """True for float feature vectors (used as they are), False for images and tokens."""
        return self.images.dtype.is_floating_point

    @property
    def is_tokens(self) -> bool:
        """True for int64 token ids (used as they are, by a backbone that takes tokens)."""
        return self.images.dtype == torch.int64

    def smallest_class(self) -> str:
        """The name of a class with the fewest examples, for error messages."""
        return self.names[int(self.counts.argmin())] if self.n_classes else ""

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
