"""Sequence tasks for memory-augmented networks: the NTM copy task and Santoro's one-shot
episodes.

Both samplers draw from their own CPU generator (same sequences on every device, state saved
in checkpoints) and return whole batches as tensors; there is no per-item Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.data.classes import ClassImages
from mnemeta.data.sampler import draw_classes
from mnemeta.errors import ConfigError, DataError


@dataclass(frozen=True)
class CopyBatch:
    """``inputs`` ``(B, 2L + 1, bits + 1)``: L random bit vectors, then the delimiter (the extra
    channel, alone), then L blank steps during which the network must write the vectors back;
    ``targets`` ``(B, L, bits)``, compared with the outputs of the last L steps."""

    inputs: Tensor
    targets: Tensor

    @property
    def length(self) -> int:
        return int(self.targets.shape[1])


def copy_batch(batch: int, length: int, bits: int = 8, *, generator: torch.Generator) -> CopyBatch:
    """The copy task of Graves et al. (2014, §4.1) for one sequence length."""
    if length < 1 or bits < 1:
        raise ConfigError(f"copy task needs length >= 1 and bits >= 1; got {length}, {bits}")
    vectors = torch.randint(0, 2, (batch, length, bits), generator=generator)
    vectors = vectors.to(torch.get_default_dtype())  # float32 unless a test runs in float64
    inputs = torch.zeros(batch, 2 * length + 1, bits + 1)
    inputs[:, :length, :bits] = vectors
    inputs[:, length, bits] = 1.0  # the delimiter channel
    return CopyBatch(inputs=inputs, targets=vectors)


class CopySampler:
    """Batches of the copy task with a length drawn uniformly from ``[min_length, max_length]``
    per batch (one length per batch keeps the batch a single tensor)."""

    def __init__(self, *, bits: int = 8, min_length: int = 1, max_length: int = 20, seed: int = 0):
        if not 1 <= min_length <= max_length:
            raise ConfigError(
                f"copy task lengths must satisfy 1 <= min_length <= max_length; got "
                f"{min_length}..{max_length}"
            )
        self.bits, self.min_length, self.max_length = bits, min_length, max_length
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch: int, part: tuple[int, int] | None = None) -> CopyBatch:
        """``part=(lo, hi)``: sequences ``lo..hi-1`` of the batch, drawn as the whole batch (the
        generator moves as for ``batch``: see :meth:`EpisodeSampler.sample`)."""
        length = int(
            torch.randint(self.min_length, self.max_length + 1, (), generator=self.generator)
        )
        data = copy_batch(batch, length, self.bits, generator=self.generator)
        if part is None:
            return data
        return CopyBatch(data.inputs[part[0] : part[1]], data.targets[part[0] : part[1]])

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)


@dataclass(frozen=True)
class OneShotBatch:
    """Episodes of Santoro et al. (2016): ``images`` ``(B, T, C*H*W)`` in [0, 1], ``labels``
    ``(B, T)`` in ``[0, classes)`` (a fresh assignment of labels to classes per episode), and
    ``instance`` ``(B, T)``: 1 for the first presentation of a class in the episode, 2 for the
    second, and so on."""

    images: Tensor
    labels: Tensor
    instance: Tensor

    def inputs(self, classes: int) -> Tensor:
        """The network's input at step t: the image of step t and the one-hot label of step
        t − 1 (zeros at t = 0), ``(B, T, C*H*W + classes)``."""
        onehot = torch.nn.functional.one_hot(self.labels, classes).to(self.images.dtype)
        previous = torch.cat([torch.zeros_like(onehot[:, :1]), onehot[:, :-1]], dim=1)
        return torch.cat([self.images, previous], dim=-1)


class OneShotSequenceSampler:
    """``classes`` classes × ``instances`` drawings per episode, in a random order.

    Labels are shuffled per episode (the classes are drawn in random order and labelled by
    position), so a label means nothing across episodes: the network must bind it in memory.
    """

    def __init__(
        self,
        data: ClassImages,
        *,
        classes: int = 5,
        instances: int = 10,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if classes < 1 or instances < 1:
            raise ConfigError(
                f"episodes need classes >= 1 and instances >= 1; got classes={classes}, "
                f"instances={instances}"
            )
        if classes > data.n_classes:
            raise DataError(
                f"episodes of {classes} classes need at least {classes} classes; the split has "
                f"{data.n_classes}"
            )
        if instances > data.min_count:
            raise DataError(
                f"{instances} instances per class asked for, but some class has only "
                f"{data.min_count} images; lower sequence.instances"
            )
        self.data, self.classes, self.instances = data, classes, instances
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch: int, part: tuple[int, int] | None = None) -> OneShotBatch:
        """``part=(lo, hi)``: episodes ``lo..hi-1`` of the batch, drawn as the whole batch (the
        generator moves as for ``batch``: see :meth:`EpisodeSampler.sample`)."""
        return self._draw(batch, self.generator, part)

    def fixed_episodes(self, n: int, seed: int, batch_size: int = 100) -> list[OneShotBatch]:
        """The same ``n`` episodes for a given seed, whatever the training state."""
        generator = torch.Generator().manual_seed(seed)
        sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
        return [self._draw(size, generator) for size in sizes]

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def _draw(
        self, batch: int, generator: torch.Generator, part: tuple[int, int] | None = None
    ) -> OneShotBatch:
        n, k = self.classes, self.instances
        per_class = self.data.images.shape[1]
        classes, drawings = draw_classes(self.data.counts.cpu(), per_class, batch, n, k, generator)
        rows = (classes.unsqueeze(-1) * per_class + drawings).reshape(batch, n * k)
        labels = torch.arange(n).repeat_interleave(k).expand(batch, -1)
        order = torch.rand(batch, n * k, generator=generator).argsort(dim=1)
        rows, labels = rows.gather(1, order), labels.gather(1, order)
        if part is not None:  # indices drawn for the whole batch, images gathered for the part
            rows, labels = rows[part[0] : part[1]], labels[part[0] : part[1]]
            batch = rows.shape[0]
        flat = self.data.images.reshape(-1, self.data.images[0, 0].numel())
        images = flat.index_select(0, rows.reshape(-1)).reshape(batch, n * k, -1)
        onehot = torch.nn.functional.one_hot(labels, n)
        instance = (onehot.cumsum(dim=1) * onehot).sum(dim=-1)
        # Pixels to [0, 1]; feature vectors (sentence embeddings) as they are.
        scale = 1.0 / 255.0 if self.data.images.dtype == torch.uint8 else 1.0
        return OneShotBatch(
            images=images.to(self.device, torch.get_default_dtype()).mul_(scale),
            labels=labels.to(self.device),
            instance=instance.to(self.device),
        )
