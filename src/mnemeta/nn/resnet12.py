"""ResNet-12, the backbone of the mini-ImageNet-era few-shot papers, and DropBlock.

The block structure is the one TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al. 2019)
use: four residual blocks of 64-160-320-640 channels, each three 3x3 conv -> BN -> LeakyReLU(0.1)
layers (the third activation after the residual sum), a 1x1 conv -> BN shortcut, then a 2x2
max-pool. 12,424,320 parameters for RGB input (the ≈12.4M quoted for MetaOptNet's ResNet-12;
the sum is written out in ``tests/nn/test_resnet12.py``).

Like :class:`mnemeta.nn.Conv4` it is a plain module tree that ``torch.func.functional_call`` can
run and ``torch.func.vmap`` can batch over tasks: BatchNorm is :class:`mnemeta.nn.BatchNorm`
(primitive ops under vmap, where the native kernel's second-order gradient is wrong), and
DropBlock draws its masks with ``torch.rand_like``, which vmap's ``randomness`` mode controls
(``"different"``: one mask per task, as ``mnemeta.algorithms.inner_loop.over_tasks`` asks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mnemeta.checks import checked
from mnemeta.errors import ConfigError
from mnemeta.nn.backbones import pooled_size
from mnemeta.nn.batchnorm import BatchNorm
from mnemeta.nn.vmap import under_vmap
from mnemeta.registry import BACKBONES, BackboneSpec

# LeakyReLU slope of TADAM / MetaOptNet's ResNet-12.
NEGATIVE_SLOPE = 0.1


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018, Algorithm 1): drop square blocks of a feature map.

    In training, each ``(N, C, H, W)`` channel map gets its own mask: block corners are drawn
    with probability γ among the positions where a ``block_size`` square fits, every square is
    zeroed, and the kept units are rescaled by ``count(mask) / count_ones(mask)`` so that the
    mean activation is unchanged. γ is the paper's eq. (1) for an ``H x W`` map,

        γ = drop_rate / block_size² · (H·W) / ((H − block_size + 1)(W − block_size + 1)),

    which makes the expected number of (corner, covered unit) pairs ``drop_rate · H · W``;
    overlapping squares make the dropped fraction a little less than ``drop_rate``.
    ``block_size`` is clipped to the map (as the reference TPU implementation does), so a 2x2
    map with block size 5 is dropped whole or kept whole. ``block_size=1`` is dropout (up to
    the rescaling, which uses the kept count rather than ``1 / (1 - p)``).

    In ``eval()`` mode, or with ``drop_rate == 0``, the input is returned as is.

    Args:
        drop_rate: target fraction of units dropped, in ``[0, 1)``. A plain attribute, so that
            a recipe may ramp it during training (MetaOptNet raises it linearly from 0).
        block_size: side of the dropped squares, >= 1.
    """

    def __init__(self, drop_rate: float = 0.0, block_size: int = 5) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"DropBlock drop_rate must be in [0, 1); got {drop_rate}")
        if block_size < 1:
            raise ConfigError(f"DropBlock block_size must be at least 1; got {block_size}")
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0.0:
            return x
        dropped = self.dropped(x)
        keep = 1.0 - dropped
        # Rescale per call (per task under vmap: numel and sum see one task's tensor); clamp so
        # that a mask that drops everything gives zeros rather than 0/0.
        scale = keep.numel() / keep.sum().clamp_min(1.0)
        return x * keep * scale

    def gamma(self, height: int, width: int) -> float:
        """Corner probability γ (eq. 1 above) for an ``height x width`` map."""
        b = min(self.block_size, height, width)
        return self.drop_rate * height * width / (b * b * (height - b + 1) * (width - b + 1))

    def dropped(self, x: Tensor) -> Tensor:
        """A fresh 0/1 mask of the units to drop, shape and dtype of ``x`` ``(N, C, H, W)``."""
        h, w = x.shape[-2], x.shape[-1]
        b = min(self.block_size, h, w)
        # Corners only where the whole square fits: the top-left (H-b+1) x (W-b+1) positions.
        # rand_like, not a Generator or numpy: vmap's randomness mode must see the draw.
        noise = torch.rand_like(x[..., : h - b + 1, : w - b + 1])
        corners = (noise < self.gamma(h, w)).to(x.dtype)
        # Unit p is dropped iff some corner s has s <= p <= s + b - 1 (per axis): a max over the
        # b corners up-left of p. Zero-pad b - 1 on each side and take a b x b max-pool, stride
        # 1: (H - b + 1) + 2(b - 1) - (b - 1) = H outputs per axis.
        return F.max_pool2d(F.pad(corners, (b - 1, b - 1, b - 1, b - 1)), b, stride=1)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, block_size={self.block_size}"


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    # No bias: a BatchNorm follows, whose shift makes a conv bias redundant.
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """One ResNet-12 block: ``(N, C_in, H, W) -> (N, C_out, H // 2, W // 2)``.

    ``x -> [conv3x3 -> BN -> LReLU] x 2 -> conv3x3 -> BN``, plus the shortcut ``conv1x1 -> BN``
    of ``x``; LeakyReLU(0.1) of the sum, 2x2 max-pool, then :class:`DropBlock`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        drop_rate: float,
        dropblock_size: int,
        track_running_stats: bool,
        primitive_bn: bool | None,
    ) -> None:
        super().__init__()

        def norm() -> BatchNorm:
            return BatchNorm(
                out_channels, track_running_stats=track_running_stats, primitive=primitive_bn
            )

        self.conv1, self.norm1 = _conv3x3(in_channels, out_channels), norm()
        self.conv2, self.norm2 = _conv3x3(out_channels, out_channels), norm()
        self.conv3, self.norm3 = _conv3x3(out_channels, out_channels), norm()
        # The shortcut always projects: every block changes the width (3 -> 64 -> ... -> 640).
        self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.shortcut_norm = norm()
        self.dropblock = DropBlock(drop_rate, dropblock_size)

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.norm1(self.conv1(x)), NEGATIVE_SLOPE)
        out = F.leaky_relu(self.norm2(self.conv2(out)), NEGATIVE_SLOPE)
        out = self.norm3(self.conv3(out))
        out = F.leaky_relu(out + self.shortcut_norm(self.shortcut(x)), NEGATIVE_SLOPE)
        return self.dropblock(F.max_pool2d(out, 2))


class ResNet12(nn.Module):
    """ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019): four :class:`ResidualBlock` s.

    Input ``(N, C, H, W)`` with ``H, W >= 16``. Output ``(N, channels[-1])`` with
    ``avg_pool`` (global average pool: 640 features at any image size), else the flattened
    map ``(N, channels[-1] * (H // 16) * (W // 16))`` as :class:`mnemeta.nn.Conv4` returns
    (16,000 for 84x84 mini-ImageNet, MetaOptNet's setting). :meth:`out_features` gives the
    length without a forward pass.

    Args:
        in_channels: channels of the input images (3 for mini-ImageNet).
        channels: width of each block; its length is the number of blocks (each halves H, W).
        avg_pool: global average pool at the end (TADAM) instead of flattening (MetaOptNet).
        drop_rate: 0 (default) disables all dropping. Otherwise, following MetaOptNet, the last
            two blocks end in :class:`DropBlock` of ``dropblock_size`` and the earlier blocks
            in DropBlock of size 1 (dropout), all at this rate.
        dropblock_size: block side of the last two blocks' DropBlock (MetaOptNet: 5 for
            mini-ImageNet, 2 for CIFAR-FS); clipped to the feature map.
        track_running_stats, primitive_bn: as for :class:`mnemeta.nn.BatchNorm` (gradient-based
            learners keep per-task batch statistics: ``track_running_stats=False``).
        channels_last: as :class:`mnemeta.nn.Conv4` (weights and, outside vmap, inputs in the
            NHWC layout oneDNN's CPU convolutions prefer).
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (64, 160, 320, 640),
        *,
        avg_pool: bool = True,
        drop_rate: float = 0.0,
        dropblock_size: int = 5,
        track_running_stats: bool = True,
        primitive_bn: bool | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if not channels or min(channels) < 1:
            raise ConfigError(
                f"ResNet12 channels must be one positive width per block; got {tuple(channels)}"
            )
        self.in_channels, self.channels = in_channels, tuple(channels)
        self.avg_pool = avg_pool
        widths = [in_channels, *self.channels]
        n = len(self.channels)
        self.blocks = nn.Sequential(
            *(
                ResidualBlock(
                    a,
                    b,
                    drop_rate=drop_rate,
                    dropblock_size=dropblock_size if i >= n - 2 else 1,
                    track_running_stats=track_running_stats,
                    primitive_bn=primitive_bn,
                )
                for i, (a, b) in enumerate(pairwise(widths))
            )
        )
        # He initialisation for the LeakyReLU that follows (fan_out, as MetaOptNet and
        # torchvision's ResNets); BN starts as the identity (BatchNorm's own ones/zeros).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, a=NEGATIVE_SLOPE, mode="fan_out", nonlinearity="leaky_relu"
                )
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4 and not under_vmap(x):
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.blocks(x)
        return out.mean(dim=(-2, -1)) if self.avg_pool else out.flatten(1)

    def out_features(self, input_shape: tuple[int, ...]) -> int:
        """Length of the flat feature vector for one image of shape ``(C, H, W)``.

        ``channels[-1]`` with ``avg_pool``, else ``channels[-1] * (H // 2**n) * (W // 2**n)``
        for ``n`` blocks (3x3 convs with padding 1 keep the size; each max-pool floors a half).
        Closed form, no forward pass; refuses images too small for ``n`` poolings.
        """
        h, w = pooled_size(
            input_shape,
            in_channels=self.in_channels,
            halvings=len(self.channels),
            backbone="ResNet12",
        )
        return self.channels[-1] * (1 if self.avg_pool else h * w)


def resnet12(
    in_channels: int = 3,
    channels: Sequence[int] = (64, 160, 320, 640),
    *,
    avg_pool: bool = True,
    drop_rate: float = 0.0,
    dropblock_size: int = 5,
    track_running_stats: bool = True,
    primitive_bn: bool | None = None,
) -> ResNet12:
    """ResNet-12 of the given widths (see :class:`ResNet12`); default 64-160-320-640."""
    return ResNet12(
        in_channels,
        channels,
        avg_pool=avg_pool,
        drop_rate=drop_rate,
        dropblock_size=dropblock_size,
        track_running_stats=track_running_stats,
        primitive_bn=primitive_bn,
    )


@dataclass
class ResNet12Config:
    # The four residual stages of Oreshkin et al. 2018 (TADAM) and Lee et al. 2019 (MetaOptNet).
    channels: tuple[int, ...] = checked((64, 160, 320, 640), ge=1)
    avg_pool: bool = True  # global average pool to channels[-1] features (TADAM); False: flatten
    drop_rate: float = checked(
        0.0, ge=0, lt=1
    )  # DropBlock's rate (MetaOptNet: 0.1 on mini-ImageNet); 0: off
    dropblock_size: int = checked(
        5, ge=1
    )  # DropBlock's square side in the last two stages (MetaOptNet: 5)


def _build_resnet12(
    cfg: ResNet12Config, in_channels: int, *, per_task_statistics: bool
) -> ResNet12:
    return ResNet12(
        in_channels,
        cfg.channels,
        avg_pool=cfg.avg_pool,
        drop_rate=cfg.drop_rate,
        dropblock_size=cfg.dropblock_size,
        track_running_stats=not per_task_statistics,
    )


BACKBONES.register(
    BackboneSpec(
        "resnet12",
        ResNet12Config,
        "ResNet-12: four residual stages of 64-160-320-640 channels, optional DropBlock",
        build=_build_resnet12,
    )
)
