"""ResNet-12 and DropBlock: sizes, parameter count, BatchNorm under vmap (float64), DropBlock masks.

Everything runs on a small ResNet-12 (widths 2-3-4-5, 16x16 inputs) in float64, so that a
mismatch between vmap and the per-task loop is a real bug and not rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from mnemeta.algorithms.maml import MAML, Classifier
from mnemeta.data.glyphs import make_glyphs
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.episode import EpisodeBatch
from mnemeta.errors import MnemetaError
from mnemeta.nn import BatchNorm, DropBlock, ResidualBlock, ResNet12, resnet12
from mnemeta.registry import BACKBONES

SMALL = (2, 3, 4, 5)


def _small(**kwargs: object) -> ResNet12:
    torch.manual_seed(0)
    return ResNet12(1, SMALL, **kwargs).double()  # type: ignore[arg-type]


# ---- sizes ----


@pytest.mark.parametrize("avg_pool", [True, False])
@pytest.mark.parametrize(
    "size", [(84, 84), (28, 28), (20, 20), (16, 16), (32, 32), (28, 20), (17, 45)]
)
def test_out_features_equals_the_real_output_length(avg_pool: bool, size: tuple[int, int]) -> None:
    model = _small(avg_pool=avg_pool).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, *size, dtype=torch.float64))
    assert out.shape == (3, model.out_features((1, *size)))
    # By hand: 5 channels, (H // 16) x (W // 16) positions unless average-pooled.
    assert model.out_features((1, *size)) == (
        5 if avg_pool else 5 * (size[0] // 16) * (size[1] // 16)
    )


def test_standard_resnet12_gives_640_or_16000_features_on_mini_imagenet() -> None:
    # 84 -> 42 -> 21 -> 10 -> 5: MetaOptNet's flattened 640 * 5 * 5 = 16,000.
    assert ResNet12().out_features((3, 84, 84)) == 640
    assert ResNet12(avg_pool=False).out_features((3, 84, 84)) == 16_000


def test_average_pool_is_the_mean_of_the_flattened_map() -> None:
    flat, pooled = _small(avg_pool=False).eval(), _small(avg_pool=True).eval()
    x = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = flat(x).view(4, 5, 2, 2).mean(dim=(-2, -1))
        torch.testing.assert_close(pooled(x), ref, rtol=1e-12, atol=1e-12)


def test_out_features_refuses_images_too_small_or_of_the_wrong_channels() -> None:
    model = _small()
    with pytest.raises(MnemetaError, match="at least 16"):
        model.out_features((1, 8, 16))
    with pytest.raises(RuntimeError):  # the forward pass indeed cannot run there
        model(torch.randn(2, 1, 8, 16, dtype=torch.float64))
    with pytest.raises(MnemetaError, match="in_channels=3"):
        model.out_features((3, 16, 16))


def test_channels_last_gives_the_same_features() -> None:
    a, b = _small(channels_last=True), _small(channels_last=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 1, 20, 20, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)


# ---- parameter count ----


def _params_by_hand(in_channels: int, widths: tuple[int, ...]) -> int:
    """Per block (c_in -> c): three bias-free 3x3 convs 9*c_in*c + 2*9*c*c, a bias-free 1x1
    shortcut c_in*c, four BatchNorms of 2*c affine parameters (running stats are buffers)."""
    total, c_in = 0, in_channels
    for c in widths:
        total += 9 * c_in * c + 2 * 9 * c * c + c_in * c + 4 * 2 * c
        c_in = c
    return total


def test_parameter_count_of_the_standard_resnet12() -> None:
    # 3 -> 64:    1,728 + 73,728 + 192 + 512           =    76,160
    # 64 -> 160:  92,160 + 460,800 + 10,240 + 1,280    =   564,480
    # 160 -> 320: 460,800 + 1,843,200 + 51,200 + 2,560 = 2,357,760
    # 320 -> 640: 1,843,200 + 7,372,800 + 204,800 + 5,120 = 9,425,920
    # total 12,424,320: the ≈12.4M quoted for MetaOptNet's ResNet-12.
    assert _params_by_hand(3, (64, 160, 320, 640)) == 12_424_320
    model = resnet12()
    assert sum(p.numel() for p in model.parameters()) == 12_424_320
    small = _small()
    assert sum(p.numel() for p in small.parameters()) == _params_by_hand(1, SMALL)


# ---- BatchNorm under vmap, float64 (the same checks Conv-4 passes) ----


def test_second_order_gradient_under_vmap_equals_per_task_loop_float64() -> None:
    """The trap from functorch issue 534: native BN gives a wrong meta-gradient under vmap."""
    torch.manual_seed(0)
    net = nn.Sequential(
        ResNet12(1, SMALL, track_running_stats=False, channels_last=False), nn.Linear(5, 1)
    ).double()
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss_fn(p, x, y):  # type: ignore[no-untyped-def]
        return (functional_call(net, p, (x,)) - y).square().mean()

    def adapted(p, sx, sy, qx, qy):  # type: ignore[no-untyped-def]
        g = grad(loss_fn)(p, sx, sy)
        return loss_fn({k: w - 0.4 * g[k] for k, w in p.items()}, qx, qy)

    tasks = 3
    sx, qx = (torch.randn(tasks, 5, 1, 16, 16, dtype=torch.float64) for _ in range(2))
    sy, qy = (torch.randn(tasks, 5, 1, dtype=torch.float64) for _ in range(2))
    batched = grad(lambda p: vmap(adapted, in_dims=(None, 0, 0, 0, 0))(p, sx, sy, qx, qy).sum())(
        params
    )
    looped = grad(lambda p: sum(adapted(p, sx[i], sy[i], qx[i], qy[i]) for i in range(tasks)))(
        params
    )
    for k in params:
        torch.testing.assert_close(batched[k], looped[k], rtol=1e-9, atol=1e-12)


def _glyph_batch() -> EpisodeBatch:
    data = make_glyphs(8, 4, image_size=16)
    b = EpisodeSampler(data, ways=3, shots=1, queries=2, seed=0).sample(4)
    return EpisodeBatch(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y, 3)


def _meta_grads(learner: nn.Module, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
    learner.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("channels_last", [False, True])
def test_vmap_maml_meta_gradient_equals_per_task_loop(channels_last: bool) -> None:
    torch.manual_seed(0)
    encoder = ResNet12(1, SMALL, track_running_stats=False, channels_last=channels_last)
    model = Classifier(encoder, encoder.out_features((1, 16, 16)), 3).double()
    batch = _glyph_batch()
    grads = {
        s: _meta_grads(MAML(model, inner_lr=0.4, inner_steps=2, strategy=s), batch)
        for s in ("vmap", "loop")
    }
    assert grads["loop"].keys() == grads["vmap"].keys()
    assert len(grads["loop"]) == len(list(model.parameters()))
    for k in grads["loop"]:
        torch.testing.assert_close(grads["vmap"][k], grads["loop"][k], rtol=1e-9, atol=1e-12)


def test_maml_trains_through_dropblock_under_vmap() -> None:
    # over_tasks vmaps with randomness="different": DropBlock must draw inside it, per task.
    torch.manual_seed(0)
    encoder = ResNet12(
        1, SMALL, drop_rate=0.2, dropblock_size=2, track_running_stats=False, channels_last=False
    )
    model = Classifier(encoder, 5, 3).double()
    grads = _meta_grads(MAML(model, inner_lr=0.4, inner_steps=1, strategy="vmap"), _glyph_batch())
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(g.abs().sum() for g in grads.values()) > 0


# ---- DropBlock ----


def test_dropblock_sizes_follow_metaoptnet() -> None:
    blocks = [m for m in ResNet12(drop_rate=0.1, dropblock_size=5).modules()]
    sizes = [b.dropblock.block_size for b in blocks if isinstance(b, ResidualBlock)]
    assert sizes == [1, 1, 5, 5]  # dropout in blocks 1-2, DropBlock in blocks 3-4
    assert all(m.drop_rate == 0.0 for m in ResNet12(1, SMALL).modules() if isinstance(m, DropBlock))


def test_dropblock_is_the_identity_in_eval_mode() -> None:
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    drop = DropBlock(0.5, 3).eval()
    assert drop(x) is x
    # In the whole network: eval with dropping on equals eval with dropping off...
    model = _small(drop_rate=0.5, dropblock_size=2, track_running_stats=False)
    images = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    model.eval()
    with_drop = model(images)
    for m in model.modules():
        if isinstance(m, DropBlock):
            m.drop_rate = 0.0
    torch.testing.assert_close(with_drop, model(images), rtol=0, atol=0)
    # ...while in training dropping changes the features (so the check above can fail).
    model.train()
    plain = model(images)
    for m in model.modules():
        if isinstance(m, DropBlock):
            m.drop_rate = 0.5
    assert not torch.allclose(model(images), plain)


def _expected_drop_fraction(h: int, w: int, b: int, gamma: float) -> tuple[float, float]:
    """(mean, max) over units of P(dropped) = 1 − (1 − γ)^n, n = corners whose square covers it.

    Written with loops, apart from the implementation: corners are the top-left positions
    ``[0, h - b] x [0, w - b]``; a corner s covers p iff s <= p <= s + b - 1 on each axis.
    """

    def covering(p: int, n_valid: int) -> int:
        return min(p, n_valid - 1) - max(0, p - b + 1) + 1

    probs = [
        1.0 - (1.0 - gamma) ** (covering(i, h - b + 1) * covering(j, w - b + 1))
        for i in range(h)
        for j in range(w)
    ]
    return sum(probs) / len(probs), max(probs)


def test_dropblock_drops_whole_squares_at_about_the_requested_rate() -> None:
    torch.manual_seed(0)
    n, c, h, w, b, rate = 64, 32, 12, 12, 3, 0.1
    drop = DropBlock(rate, b).train()
    out = drop(torch.ones(n, c, h, w, dtype=torch.float64))
    zero = out == 0

    # Rescaled: every kept unit is numel / kept, so the mean activation stays 1 exactly.
    kept = int((~zero).sum())
    torch.testing.assert_close(out[~zero], torch.full((kept,), n * c * h * w / kept).double())

    # Whole squares: the zeros are exactly the union of the b x b squares they contain
    # (erode then dilate leaves them unchanged); scattered zeros (dropout) would not be.
    hv, wv = h - b + 1, w - b + 1
    full = zero.unfold(2, b, 1).unfold(3, b, 1).all(-1).all(-1)  # (n, c, hv, wv)
    union = torch.zeros_like(zero)
    for i in range(b):
        for j in range(b):
            union[..., i : i + hv, j : j + wv] |= full
    assert torch.equal(union, zero)

    # Rate. γ is eq. (1) of Ghiasi et al.; the exact expected fraction is below `rate` since
    # overlapping squares count once (0.0950 here: within 10% of the requested 0.1).
    gamma = rate * h * w / (b * b * hv * wv)
    assert drop.gamma(h, w) == pytest.approx(gamma, rel=1e-15)
    expected, p_max = _expected_drop_fraction(h, w, b, gamma)
    assert 0.9 * rate < expected <= rate
    # Tolerance: the n*c channel maps have independent masks. Within one map, units p, q are
    # dependent only when they share a corner (|p - q| < b per axis: at most (2b-1)^2 q per p),
    # and |Cov| <= p_max (1 - p_max), so Var(map fraction) <= (2b-1)^2 p_max (1 - p_max) / (h w)
    # and the s.d. of the mean over n*c maps is at most 0.0032 here. 5 s.d. (~0.016).
    sd = math.sqrt((2 * b - 1) ** 2 * p_max * (1 - p_max) / (h * w) / (n * c))
    assert abs(zero.double().mean().item() - expected) < 5 * sd


def test_dropblock_clips_the_block_to_a_small_map() -> None:
    # A 2x2 map with block size 5: the block is clipped to 2, so each map goes whole or stays.
    torch.manual_seed(0)
    out = DropBlock(0.3, 5).train()(torch.ones(500, 4, 2, 2, dtype=torch.float64))
    dropped_per_map = (out == 0).flatten(2).sum(-1)
    assert set(dropped_per_map.unique().tolist()) == {0, 4}
    # γ = rate here (one corner position): 2,000 maps, s.d. of the fraction sqrt(.21/2000)=.01.
    assert abs((dropped_per_map == 4).double().mean().item() - 0.3) < 0.05


def test_vmapped_dropblock_draws_one_mask_per_task() -> None:
    drop = DropBlock(0.2, 2).train()
    x = torch.ones(5, 3, 4, 8, 8, dtype=torch.float64)  # 5 tasks of the same images
    torch.manual_seed(0)
    different = vmap(drop, randomness="different")(x)
    masks = different != 0
    assert all(not torch.equal(masks[0], masks[t]) for t in range(1, 5))
    # Each task is rescaled by its own kept count (numel and sum see one task under vmap).
    for t in range(5):
        kept = int(masks[t].sum())
        torch.testing.assert_close(different[t][masks[t]].unique().item(), 3 * 4 * 8 * 8 / kept)
    # The draw is vmap's: "same" gives one mask for all tasks, "error" refuses to draw.
    same = vmap(drop, randomness="same")(x) != 0
    assert all(torch.equal(same[0], same[t]) for t in range(1, 5))
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(drop)(x)


def test_dropblock_refuses_bad_settings() -> None:
    with pytest.raises(MnemetaError, match="drop_rate"):
        DropBlock(1.0, 3)
    with pytest.raises(MnemetaError, match="block_size"):
        DropBlock(0.1, 0)
    with pytest.raises(MnemetaError, match="channels"):
        ResNet12(3, ())


# ---- construction: defaults, every argument passed on, initialisation ----


def _norms(model: nn.Module) -> list[BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


def _drops(model: ResNet12) -> list[tuple[float, int]]:
    return [(b.dropblock.drop_rate, b.dropblock.block_size) for b in model.blocks]


def test_resnet12_defaults_and_builders() -> None:
    """ResNet12() and resnet12() are TADAM's / MetaOptNet's: 3 input channels, 64-160-320-640,
    global average pool, no dropping (DropBlock of 5 in the last two blocks, dropout before),
    running BN statistics, channels_last weights; every argument reaches the blocks."""
    for model in (ResNet12(), resnet12()):
        assert model.in_channels == 3 and model.channels == (64, 160, 320, 640)
        assert model.avg_pool is True and model.out_features((3, 84, 84)) == 640
        assert _drops(model) == [(0.0, 1), (0.0, 1), (0.0, 5), (0.0, 5)]
        assert all(b.running_mean is not None and b.primitive is None for b in _norms(model))
        assert model.channels_last is True
        assert model.blocks[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    custom = resnet12(
        2,
        (2, 3, 4),
        avg_pool=False,
        drop_rate=0.2,
        dropblock_size=3,
        track_running_stats=False,
        primitive_bn=True,
    )
    assert custom.in_channels == 2 and custom.channels == (2, 3, 4) and custom.avg_pool is False
    assert _drops(custom) == [(0.2, 1), (0.2, 3), (0.2, 3)]
    assert len(_norms(custom)) == 3 * 4  # three BNs on the main path, one on the shortcut
    assert all(b.running_mean is None and b.primitive is True for b in _norms(custom))
    assert custom.blocks[0].conv1.in_channels == 2 and custom.blocks[2].conv3.out_channels == 4
    assert custom.out_features((2, 16, 16)) == 4 * 2 * 2


def test_registered_resnet12_builds_from_its_config() -> None:
    spec = BACKBONES.get("resnet12")
    cfg = spec.config(channels=(2, 3), avg_pool=False, drop_rate=0.3, dropblock_size=2)
    per_task = spec.build(cfg, 1, per_task_statistics=True)
    assert per_task.in_channels == 1 and per_task.channels == (2, 3)
    assert per_task.avg_pool is False and _drops(per_task) == [(0.3, 2), (0.3, 2)]
    assert all(b.running_mean is None for b in _norms(per_task))
    shared = spec.build(spec.config(), 3, per_task_statistics=False)
    assert shared.channels == (64, 160, 320, 640) and shared.avg_pool is True
    assert all(b.running_mean is not None for b in _norms(shared))


def test_width_one_blocks_are_allowed() -> None:
    model = ResNet12(1, (1, 1), channels_last=False).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 1)
    with pytest.raises(MnemetaError, match="one positive width per block; got \\(2, 0\\)"):
        ResNet12(1, (2, 0))


def test_he_initialisation_for_the_leaky_relu() -> None:
    """Every conv weight ~ N(0, gain² / fan_out) with gain = sqrt(2 / (1 + 0.1²)) (LeakyReLU
    0.1, fan_out as MetaOptNet). Pooled over ~3.3M weights, the standardised values' std is 1
    within 5 sigma = 5 / sqrt(2 N) = 0.2%; slope 0 (gain sqrt 2) would be 0.5% off, fan_in 41%
    off on the 256 -> 512 convs."""
    torch.manual_seed(0)
    model = ResNet12(3, (256, 512), channels_last=False)
    gain = math.sqrt(2.0 / (1 + 0.1**2))
    z = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            z.append(m.weight.detach().flatten() / (gain / math.sqrt(fan_out)))
            assert m.bias is None  # a BatchNorm follows every conv
    pooled = torch.cat(z)
    assert abs(float(pooled.std()) - 1.0) < 5 / math.sqrt(2 * pooled.numel())


def test_resnet12_channels_last_layout() -> None:
    """As Conv4's: weights and the first conv's input channels_last by default for a plain
    (N, C, H, W) batch; neither with channels_last=False."""
    seen: list[bool] = []
    x = torch.randn(2, 3, 16, 16)
    for channels_last in (True, False):
        model = ResNet12(3, (2, 3), channels_last=channels_last).eval()
        assert model.channels_last is channels_last
        w = model.blocks[0].conv1.weight
        assert w.is_contiguous(memory_format=torch.channels_last) is channels_last
        handle = model.blocks[0].conv1.register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
        with torch.no_grad():
            model(x)
        handle.remove()
        assert seen.pop() is channels_last


def test_residual_block_float64_reference() -> None:
    """One block in train mode against the same computation written out with the functional
    ops: three 3x3 convs with batch-statistic BN and LeakyReLU(0.1), the 1x1 shortcut with BN
    added before the last LeakyReLU, then a 2x2 max-pool."""
    torch.manual_seed(0)
    block = ResidualBlock(
        2, 3, drop_rate=0.0, dropblock_size=1, track_running_stats=False, primitive_bn=None
    ).double()
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)

    def bn(h: torch.Tensor) -> torch.Tensor:
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = h.var(dim=(0, 2, 3), keepdim=True, correction=0)
        return (h - mean) / torch.sqrt(var + 1e-5)  # weight 1, bias 0 at init

    def lrelu(h: torch.Tensor) -> torch.Tensor:
        return torch.where(h > 0, h, 0.1 * h)

    conv = torch.nn.functional.conv2d
    h = lrelu(bn(conv(x, block.conv1.weight, padding=1)))
    h = lrelu(bn(conv(h, block.conv2.weight, padding=1)))
    h = bn(conv(h, block.conv3.weight, padding=1))
    h = lrelu(h + bn(conv(x, block.shortcut.weight)))
    want = torch.nn.functional.max_pool2d(h, 2)
    torch.testing.assert_close(block(x), want, rtol=1e-10, atol=1e-12)


# ---- DropBlock by hand ----


def test_dropblock_defaults_to_no_dropping() -> None:
    d = DropBlock().train()
    assert (d.drop_rate, d.block_size) == (0.0, 5)
    x = torch.randn(2, 3, 8, 8)
    assert d(x) is x


class _FixedMask(DropBlock):
    """DropBlock with a given mask, to check the rescaling of forward by hand."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(0.5, 1)
        self.mask = mask

    def dropped(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask


def test_dropblock_rescales_by_the_kept_count() -> None:
    """Kept units are scaled by count / kept: 4 / 1 when one unit of four is kept; a mask that
    drops everything gives zeros (0 / 0 is clamped)."""
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    one = _FixedMask(torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]]])).train()
    torch.testing.assert_close(one(x), torch.tensor([[[[0.0, 0.0], [12.0, 0.0]]]]))
    half = _FixedMask(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])).train()
    torch.testing.assert_close(half(x), torch.tensor([[[[0.0, 4.0], [6.0, 0.0]]]]))
    every = _FixedMask(torch.ones(1, 1, 2, 2)).train()
    assert torch.equal(every(x), torch.zeros(1, 1, 2, 2))


def test_dropblock_gamma_clips_the_block_to_each_side() -> None:
    """γ = rate · H·W / (b² (H − b + 1)(W − b + 1)) with b = min(block, H, W): a 3 x 8 map and
    a block of 5 give b = 3: 0.2 · 24 / (9 · 1 · 6); and the same for 8 x 3."""
    d = DropBlock(0.2, 5)
    assert d.gamma(3, 8) == pytest.approx(0.2 * 24 / (9 * 1 * 6), rel=1e-12)
    assert d.gamma(8, 3) == pytest.approx(0.2 * 24 / (9 * 6 * 1), rel=1e-12)
    assert d.gamma(10, 10) == pytest.approx(0.2 * 100 / (25 * 6 * 6), rel=1e-12)


def test_dropblock_mask_of_a_non_square_map() -> None:
    """On a 6 x 10 map with blocks of 3 (and 2 x 9 and 9 x 2 maps, where the block clips to 2):
    the mask has the input's shape and is a union of whole b x b squares inside the map."""
    torch.manual_seed(0)
    for shape, block, b in [((4, 2, 6, 10), 3, 3), ((4, 2, 2, 9), 3, 2), ((4, 2, 9, 2), 3, 2)]:
        d = DropBlock(0.3, block)
        mask = d.dropped(torch.zeros(shape))
        assert mask.shape == shape and mask.sum() > 0
        h, w = shape[-2:]
        covered = torch.zeros(shape)
        for i in range(h - b + 1):
            for j in range(w - b + 1):
                full = mask[..., i : i + b, j : j + b].amin(dim=(-2, -1)) == 1
                covered[..., i : i + b, j : j + b] += full[..., None, None].float()
        assert torch.equal(covered > 0, mask == 1)  # every dropped unit is in a dropped square
