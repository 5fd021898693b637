from __future__ import annotations

import torch
from torch.func import grad, vmap

from mnemeta.nn.vmap import under_vmap


def test_under_vmap_sees_through_grad_wrappers() -> None:
    seen: list[bool] = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append(under_vmap(x))
        return (x * x).sum()

    x = torch.ones(3, 2)
    probe(x)
    grad(probe)(x[0])
    vmap(probe)(x)
    vmap(grad(probe))(x)  # the MAML case: a grad wrapper around a batched tensor
    grad(lambda y: vmap(probe)(y).sum())(x)
    assert seen == [False, False, True, True, True]
