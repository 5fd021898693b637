"""Backbones written so that ``torch.func.functional_call`` can run them and vmap over tasks.

Plain ``nn.Module`` trees with no hidden state besides optional BN running statistics; batch
norm is :class:`mnemeta.nn.BatchNorm` (primitive ops under vmap, where the native kernel
gets second-order gradients wrong; the native kernel elsewhere).
Generic builders take every size as an argument; presets in the configs name the sizes a paper
used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from mnemeta.checks import checked
from mnemeta.errors import ConfigError
from mnemeta.nn.batchnorm import BatchNorm
from mnemeta.nn.vmap import under_vmap
from mnemeta.registry import BACKBONES, BackboneSpec


def pooled_size(
    input_shape: tuple[int, ...], *, in_channels: int, halvings: int, backbone: str
) -> tuple[int, int]:
    """``(H', W')`` of a ``(C, H, W)`` image after ``halvings`` 2x2 max-pools (stride 2, no pad).

    Each pool floors (``84 -> 42 -> 21 -> 10 -> 5``), and ``floor(floor(h / 2) / 2) ==
    floor(h / 4)``, so the result is ``h // 2**halvings``. A side that reaches 1 before the last
    pool makes that pool fail at run time, so such a shape is refused here instead.
    """
    if len(input_shape) != 3:
        raise ConfigError(
            f"{backbone} takes images (C, H, W); got input_shape {tuple(input_shape)}; pass "
            "the shape of one image without the batch dimension, e.g. (1, 28, 28)"
        )
    c, h, w = input_shape
    if c != in_channels:
        raise ConfigError(
            f"{backbone} was built for {in_channels} input channel(s) but input_shape "
            f"{tuple(input_shape)} has {c}; build it with in_channels={c}"
        )
    side = 2**halvings
    if h < side or w < side:
        raise ConfigError(
            f"{backbone} halves the image {halvings} times, so H and W must be at least {side}; "
            f"got {h}x{w}; use larger images or a shallower backbone"
        )
    return h // side, w // side


class ConvBlock(nn.Module):
    """conv3x3 (padding 1) -> BatchNorm -> ReLU -> max-pool 2: one block of Conv-4."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        track_running_stats: bool,
        primitive_bn: bool | None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = BatchNorm(
            out_channels, track_running_stats=track_running_stats, primitive=primitive_bn
        )

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)


class Conv4(nn.Module):
    """The standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017; Finn et al. 2017).

    Four :class:`ConvBlock` s of ``hidden`` channels. Input ``(N, C, H, W)``; output
    ``(N, hidden * (H // 16) * (W // 16))`` — 64 features for 28×28 Omniglot with hidden=64,
    1600 for 84×84 miniImageNet.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        *,
        depth: int = 4,
        track_running_stats: bool = True,
        primitive_bn: bool | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.hidden, self.depth = in_channels, hidden, depth
        widths = [in_channels] + [hidden] * depth
        self.blocks = nn.Sequential(
            *(
                ConvBlock(a, b, track_running_stats=track_running_stats, primitive_bn=primitive_bn)
                for a, b in pairwise(widths)
            )
        )
        # channels_last (weights and inputs) makes oneDNN's CPU convolutions ~1.4x faster here
        # (measured on the 2-core CI machine, 360 28x28 images, forward + backward).
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4 and not under_vmap(x):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.blocks(x).flatten(1)

    def out_features(self, input_shape: tuple[int, ...]) -> int:
        """Length of the flat feature vector for one image of shape ``(C, H, W)``.

        ``hidden * (H // 2**depth) * (W // 2**depth)``: each block keeps the size (3x3 conv,
        padding 1) and then halves it, flooring (2x2 max-pool). Closed form, no forward pass.
        """
        h, w = pooled_size(
            input_shape, in_channels=self.in_channels, halvings=self.depth, backbone="Conv4"
        )
        return (self.hidden if self.depth > 0 else self.in_channels) * h * w


class MLP(nn.Module):
    """Fully connected ReLU network ``in -> hidden... -> out`` (Finn et al.: 1-40-40-1).

    Input ``(N, in_features)`` -> ``(N, out_features)``. With ``batch_norm`` each hidden layer is
    followed by :class:`BatchNorm` before its ReLU.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        batch_norm: bool = False,
        track_running_stats: bool = True,
        primitive_bn: bool | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = [in_features, *hidden]
        for a, b in pairwise(widths):
            layers.append(nn.Linear(a, b))
            if batch_norm:
                layers.append(
                    BatchNorm(b, track_running_stats=track_running_stats, primitive=primitive_bn)
                )
            layers.append(nn.ReLU())
        layers.append(nn.Linear(widths[-1], out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))

    def out_features(self, input_shape: tuple[int, ...]) -> int:
        """Length of the output for one input of shape ``input_shape`` (its product must be
        ``in_features``: the input is flattened, so ``(in_features,)`` or e.g. ``(1, 2, 2)``)."""
        first, last = self.layers[0], self.layers[-1]
        assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
        n = math.prod(input_shape)
        if n != first.in_features:
            raise ConfigError(
                f"MLP was built for {first.in_features} input features but input_shape "
                f"{tuple(input_shape)} has {n}; build it with in_features={n}"
            )
        return last.out_features


def conv4(
    in_channels: int = 1,
    hidden: int = 64,
    *,
    track_running_stats: bool = True,
    primitive_bn: bool | None = None,
) -> Conv4:
    """Conv-4 with ``hidden`` channels per block (see :class:`Conv4`)."""
    return Conv4(
        in_channels, hidden, track_running_stats=track_running_stats, primitive_bn=primitive_bn
    )


def mlp(in_features: int, hidden: Sequence[int] = (40, 40), out_features: int = 1) -> MLP:
    """An MLP; the default is Finn et al.'s sinusoid regressor 1-40-40-1."""
    return MLP(in_features, hidden, out_features)


@dataclass
class Conv4Config:
    hidden: int = checked(
        64, ge=1
    )  # channels of each block: 64 in every Omniglot paper reproduced here


def _build_conv4(cfg: Conv4Config, in_channels: int, *, per_task_statistics: bool) -> Conv4:
    # per_task_statistics: BN uses each task's batch statistics and keeps none (the MAML
    # paper); otherwise running statistics for evaluation. Under vmap BN runs on primitive ops.
    return Conv4(in_channels, cfg.hidden, track_running_stats=not per_task_statistics)


BACKBONES.register(
    BackboneSpec(
        "conv4",
        Conv4Config,
        "four 3x3 conv-BN-ReLU-pool blocks of `hidden` channels (Vinyals et al. 2016)",
        build=_build_conv4,
    )
)
