"""Backbones know their own size: ``out_features`` (closed form) equals the real output length."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mnemeta.errors import MnemetaError
from mnemeta.nn import MLP, Conv4, ResNet12

# Odd sizes on purpose: 84 -> 42 -> 21 -> 10 -> 5 floors twice, 20 -> 10 -> 5 -> 2 -> 1 floors
# once, 28 is Omniglot, 16 the smallest a 4-pool backbone takes; non-square too.
SIZES = [(84, 84), (28, 28), (20, 20), (16, 16), (32, 32), (28, 20), (17, 45)]

IMAGE_BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "conv4": lambda c: Conv4(c, 3),
    "conv4-depth3": lambda c: Conv4(c, 2, depth=3, channels_last=False),
    "conv4-depth0": lambda c: Conv4(c, 2, depth=0),
    "resnet12": lambda c: ResNet12(c, (2, 3, 4, 5)),
    "resnet12-flat": lambda c: ResNet12(c, (2, 3, 4, 5), avg_pool=False),
    "resnet12-3blocks": lambda c: ResNet12(c, (2, 3, 4), avg_pool=False, channels_last=False),
}


@pytest.mark.parametrize("name", sorted(IMAGE_BACKBONES))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_out_features_equals_the_real_output_length(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = IMAGE_BACKBONES[name](2).eval()
    shape = (2, *size)
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, model.out_features(shape))


def test_conv4_out_features_by_hand() -> None:
    # The figures the recipes computed by hand as hidden * (image_size // 16) ** 2.
    assert Conv4(1, 64).out_features((1, 28, 28)) == 64 * 1 * 1
    assert Conv4(3, 64).out_features((3, 84, 84)) == 64 * 5 * 5
    assert Conv4(1, 32).out_features((1, 32, 48)) == 32 * 2 * 3


def test_conv4_out_features_refuses_shapes_it_cannot_run() -> None:
    model = Conv4(1, 4)
    with pytest.raises(MnemetaError, match="at least 16"):
        model.out_features((1, 15, 28))
    # ...and the forward pass indeed fails there: a 1x1 map cannot be max-pooled by 2.
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 1, 15, 28))
    with pytest.raises(MnemetaError, match="in_channels=3"):
        model.out_features((3, 28, 28))
    with pytest.raises(MnemetaError, match=r"\(C, H, W\)"):
        model.out_features((28, 28))


@pytest.mark.parametrize("shape", [(4,), (1, 2, 2), (4, 1)])
def test_mlp_out_features_for_any_shape_that_flattens_to_in_features(
    shape: tuple[int, ...],
) -> None:
    model = MLP(4, (5, 6), 7)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) == (2, model.out_features(shape))


def test_mlp_out_features_refuses_the_wrong_input_size() -> None:
    with pytest.raises(MnemetaError, match="in_features=6"):
        MLP(4, (5,), 1).out_features((2, 3))
