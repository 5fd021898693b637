"""Backbones know their own size: ``out_features`` (closed form) equals the real output length."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mnemeta.errors import MnemetaError
from mnemeta.nn import MLP, BatchNorm, Conv4, ResNet12, conv4, mlp
from mnemeta.registry import BACKBONES

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


def _linears(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def _norms(model: nn.Module) -> list[BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


def test_builders_defaults() -> None:
    """conv4() and Conv4() are the Omniglot backbone of every paper reproduced here: 1 input
    channel, four blocks of 64, running statistics, the automatic BN path; mlp(1) is Finn et
    al.'s 1-40-40-1 sinusoid regressor. The recipes and presets rely on these defaults."""
    for model in (conv4(), Conv4()):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 64)] + [(64, 64)] * 3
        assert [b.num_features for b in _norms(model)] == [64] * 4
        assert all(b.running_mean is not None and b.primitive is None for b in _norms(model))
        assert model.channels_last is True  # the documented speed default
        with torch.no_grad():
            assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
    custom = conv4(3, 32, track_running_stats=False, primitive_bn=True)
    convs = [m for m in custom.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32)] + [(32, 32)] * 3
    assert all(b.running_mean is None and b.primitive is True for b in _norms(custom))
    assert _linears(mlp(1)) == [(1, 40), (40, 40), (40, 1)]
    assert _linears(mlp(2, (8,), 3)) == [(2, 8), (8, 3)]
    assert mlp(1)(torch.zeros(5, 1)).shape == (5, 1)


@pytest.mark.parametrize("primitive", [True, False])
def test_backbones_pass_primitive_bn(primitive: bool) -> None:
    """primitive_bn reaches every BatchNorm (with the default None, dropping it on the way
    would change nothing, so only a forced value shows it)."""
    for model in (
        Conv4(1, 4, primitive_bn=primitive),
        conv4(1, 4, primitive_bn=primitive),
        MLP(3, [4, 5], 2, batch_norm=True, primitive_bn=primitive),
    ):
        norms = _norms(model)
        assert len(norms) in (2, 4)
        assert all(b.primitive is primitive for b in norms)


def test_registered_conv4_keeps_statistics_unless_per_task() -> None:
    spec = BACKBONES.get("conv4")
    shared = spec.build(spec.config(), 3, per_task_statistics=False)
    per_task = spec.build(spec.config(hidden=8), 1, per_task_statistics=True)
    assert shared.in_channels == 3 and shared.hidden == 64
    assert all(b.running_mean is not None for b in _norms(shared))
    assert per_task.in_channels == 1 and per_task.hidden == 8
    assert all(b.running_mean is None and b.running_var is None for b in _norms(per_task))


def test_mlp_with_batch_norm() -> None:
    """MLP(3, [4, 5], 2, batch_norm=True) is Linear-BN(4)-ReLU-Linear-BN(5)-ReLU-Linear; in train
    mode its output equals the same computation written out in float64 (BN with the biased
    batch variance, eps 1e-5, weight 1 and bias 0 at init)."""
    torch.manual_seed(0)
    model = MLP(3, [4, 5], 2, batch_norm=True).double()
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Linear", "BatchNorm", "ReLU", "Linear", "BatchNorm", "ReLU", "Linear"]
    assert _linears(model) == [(3, 4), (4, 5), (5, 2)]
    assert [b.num_features for b in _norms(model)] == [4, 5]
    assert all(b.running_mean is not None and b.primitive is None for b in _norms(model))
    untracked = MLP(3, [4, 5], 2, batch_norm=True, track_running_stats=False)
    assert all(b.running_mean is None for b in _norms(untracked))

    x = torch.randn(7, 3, dtype=torch.float64)
    h = x
    lin = [m for m in model.layers if isinstance(m, nn.Linear)]
    for layer in lin[:-1]:
        h = h @ layer.weight.T + layer.bias
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, correction=0) + 1e-5)
        h = h.clamp_min(0)
    want = h @ lin[-1].weight.T + lin[-1].bias
    torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)
    # Without batch_norm there is no BN at all.
    assert not _norms(MLP(3, [4, 5], 2))


def test_conv4_channels_last_layout() -> None:
    """Conv4's documented speed default: weights and the first conv's input channels_last for a
    plain (N, C, H, W) batch; neither with channels_last=False. The values are equal either way,
    so only the layout shows it."""
    seen: list[bool] = []

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].is_contiguous(memory_format=torch.channels_last))

    x = torch.randn(2, 3, 16, 16)
    for channels_last in (True, False):
        model = Conv4(3, 4, channels_last=channels_last).eval()
        assert model.channels_last is channels_last
        weight = model.blocks[0].conv.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
        handle = model.blocks[0].conv.register_forward_pre_hook(record)
        with torch.no_grad():
            out = model(x)
        handle.remove()
        assert seen.pop() is channels_last
        assert out.shape == (2, 4)


def test_conv4_values_do_not_depend_on_the_layout() -> None:
    torch.manual_seed(0)
    a = Conv4(3, 4, channels_last=True).eval()
    b = Conv4(3, 4, channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)


def test_conv4_out_features_without_or_with_one_block() -> None:
    """depth 0 is the identity (the input's channels, flattened); depth 1 halves once into
    hidden channels (hidden differs from in_channels here, so the two cannot be confused)."""
    assert Conv4(1, 3, depth=0).out_features((1, 5, 7)) == 1 * 5 * 7
    assert Conv4(1, 3, depth=1).out_features((1, 6, 9)) == 3 * 3 * 4
    with torch.no_grad():
        assert Conv4(1, 3, depth=1).eval()(torch.zeros(2, 1, 6, 9)).shape == (2, 36)


def test_shape_errors_name_the_backbone() -> None:
    with pytest.raises(
        MnemetaError,
        match=r"^Conv4 takes images \(C, H, W\); got input_shape \(28, 28\); pass the shape of "
        r"one image without the batch dimension, e\.g\. \(1, 28, 28\)$",
    ):
        Conv4(1, 4).out_features((28, 28))
    with pytest.raises(
        MnemetaError, match=r"^Conv4 halves the image 4 times, so H and W must be at least 16"
    ):
        Conv4(1, 4).out_features((1, 8, 28))
    with pytest.raises(
        MnemetaError, match=r"^ResNet12 was built for 1 input channel\(s\) but input_shape"
    ):
        ResNet12(1, (2, 3)).out_features((3, 16, 16))
