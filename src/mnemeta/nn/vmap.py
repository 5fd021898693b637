"""Is this tensor inside ``torch.func.vmap``? Layers that must behave differently there ask."""

from __future__ import annotations

import torch
from torch import Tensor


def under_vmap(x: Tensor) -> bool:
    """Whether ``x`` is batched by vmap at any level of functorch wrapping.

    Under ``vmap(grad(f))`` a tensor is a grad wrapper *around* a batched tensor, so the
    outermost wrapper alone does not tell; the wrappers are peeled one by one. Uses functorch's
    own (private, long-stable) queries; if a future PyTorch drops them, answers True, the
    choice that is correct everywhere.

    Under ``torch.compile`` also True, without asking: Dynamo cannot trace the queries (each
    would break the graph, and a break inside vmap leaves the whole meta-loss uncompiled), and
    the primitive ops that True selects are what the compiler fuses anyway.
    """
    if torch.compiler.is_compiling():
        return True
    f = torch._C._functorch
    try:
        while f.is_functorch_wrapped_tensor(x):
            if f.is_batchedtensor(x):
                return True
            x = f.get_unwrapped(x)
    except AttributeError:  # pragma: no cover - only if PyTorch renames these
        return True
    return False
