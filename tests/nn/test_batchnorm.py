"""BatchNorm from primitive ops: PyTorch's values, right second-order gradients under vmap."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

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
