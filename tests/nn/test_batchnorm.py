"""BatchNorm from primitive ops: PyTorch's values, right second-order gradients under vmap."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from mnemeta.nn import BatchNorm, Conv4


def test_matches_native_batchnorm_in_train_and_eval() -> None:
    torch.manual_seed(0)
    ours, native = BatchNorm(3, primitive=True), nn.BatchNorm2d(3)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
        native.weight.copy_(ours.weight)
        native.bias.copy_(ours.bias)
    for _ in range(3):
        x = torch.randn(8, 3, 5, 5) * 2 + 1
        torch.testing.assert_close(ours(x), native(x))
    torch.testing.assert_close(ours.running_mean, native.running_mean)
    torch.testing.assert_close(ours.running_var, native.running_var)
    ours.eval()
    native.eval()
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(ours(x), native(x))


def test_native_mode_matches_primitive_mode() -> None:
    torch.manual_seed(0)
    prim, fast = BatchNorm(4, primitive=True), BatchNorm(4, primitive=False)
    x = torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(prim(x), fast(x))
    torch.testing.assert_close(prim.running_var, fast.running_var)


def _inner_adapted_loss(model: nn.Module):  # type: ignore[no-untyped-def]
    """Query loss after one inner SGD step on the support: needs a second-order gradient."""

    def loss_fn(params, x, y):  # type: ignore[no-untyped-def]
        return (functional_call(model, params, (x,)) - y).square().mean()

    def adapted(params, sx, sy, qx, qy):  # type: ignore[no-untyped-def]
        g = grad(loss_fn)(params, sx, sy)
        fast = {k: p - 0.4 * g[k] for k, p in params.items()}
        return loss_fn(fast, qx, qy)

    return adapted


def test_second_order_gradient_under_vmap_equals_per_task_loop_float64() -> None:
    """The trap from functorch issue 534: native BN gives a wrong meta-gradient under vmap."""
    torch.manual_seed(0)
    model = Conv4(1, 4, track_running_stats=False, channels_last=False).double()
    head = nn.Linear(4, 1).double()
    net = nn.Sequential(model, head)
    params = {k: v.detach() for k, v in net.named_parameters()}
    tasks = 3
    sx, qx = torch.randn(tasks, 5, 1, 16, 16).double(), torch.randn(tasks, 5, 1, 16, 16).double()
    sy, qy = torch.randn(tasks, 5, 1).double(), torch.randn(tasks, 5, 1).double()
    adapted = _inner_adapted_loss(net)

    batched = grad(lambda p: vmap(adapted, in_dims=(None, 0, 0, 0, 0))(p, sx, sy, qx, qy).sum())(
        params
    )
    looped = grad(lambda p: sum(adapted(p, sx[i], sy[i], qx[i], qy[i]) for i in range(tasks)))(
        params
    )
    for k in params:
        torch.testing.assert_close(batched[k], looped[k], rtol=1e-9, atol=1e-12)


class _OpLog(TorchDispatchMode):
    """Records the name of every aten op that runs: which path a layer took, which the values
    cannot show (both paths agree to rounding)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _ops(bn: BatchNorm, *, vmapped: bool) -> list[str]:
    x = torch.randn(2, 6, 4, 3, 3)
    with _OpLog() as log:
        if vmapped:
            vmap(bn)(x)
        else:
            bn(x[0])
    return log.ops


def test_batchnorm_runs_the_chosen_path() -> None:
    """primitive=None: the native kernel outside vmap (2x faster), primitive ops inside (the
    native kernel's second-order gradient is wrong there); True / False force one path."""
    torch.manual_seed(0)
    native, primitive = "native_batch_norm", "var_mean"
    for setting, plain, under_vmap in [
        (None, native, primitive),
        (True, primitive, primitive),
        (False, native, native),
    ]:
        bn = BatchNorm(4, track_running_stats=False, primitive=setting)
        assert bn.primitive is setting
        for vmapped, wanted in [(False, plain), (True, under_vmap)]:
            ops = _ops(bn, vmapped=vmapped)
            other = primitive if wanted == native else native
            assert wanted in ops and other not in ops, (setting, vmapped, ops)


def test_native_path_uses_momentum_and_eps() -> None:
    """Non-default momentum and eps (the defaults 0.1 and 1e-5 are also F.batch_norm's, so only
    other values show one that is not passed on), on both paths, against the formula in float64:
    y = (x - mean) / sqrt(var_biased + eps) * w + b, running = lerp(running, batch, momentum)
    with the unbiased variance."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64) * 2 + 1
    n = 6 * 3 * 3
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), correction=0)
    for primitive in (False, True):
        bn = BatchNorm(4, momentum=0.3, eps=0.1, primitive=primitive).double()
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
            bn.bias.copy_(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
        y = bn(x)
        view = (1, -1, 1, 1)
        want = (x - mean.view(view)) / torch.sqrt(var.view(view) + 0.1) * bn.weight.view(
            view
        ) + bn.bias.view(view)
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_mean, 0.3 * mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            bn.running_var, 0.7 + 0.3 * var * n / (n - 1), rtol=1e-12, atol=1e-12
        )
        # eval uses the running statistics with the same eps
        bn.eval()
        want = (x - bn.running_mean.view(view)) / torch.sqrt(
            bn.running_var.view(view) + 0.1
        ) * bn.weight.view(view) + bn.bias.view(view)
        torch.testing.assert_close(bn(x), want, rtol=1e-12, atol=1e-12)


def test_batchnorm_repr() -> None:
    assert repr(BatchNorm(3, track_running_stats=False, primitive=True)) == (
        "BatchNorm(3, eps=1e-05, track_running_stats=False, primitive=True)"
    )
    assert repr(BatchNorm(2)) == "BatchNorm(2, eps=1e-05, track_running_stats=True, primitive=None)"
