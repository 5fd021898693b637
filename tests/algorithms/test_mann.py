"""The memory-augmented network: shapes, the wipe, gradients, and agreement with the memory
library's pure functions (the module is the controller plus those functions, nothing hidden)."""

from __future__ import annotations

import pytest
import torch

from mnemeta.algorithms.mann import MemoryAugmentedNetwork
from mnemeta.memory import lrua


@pytest.mark.parametrize("memory", ["ntm", "lrua", "none"])
def test_shapes_gradients_and_wipe(memory: str) -> None:
    torch.manual_seed(0)
    net = MemoryAugmentedNetwork(
        7, 3, controller=16, memory=memory, rows=10, width=5, read_heads=2, write_heads=2
    )
    x = torch.randn(4, 6, 7)
    logits, state = net(x)
    assert logits.shape == (4, 6, 3)
    logits.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # state=None wipes: the same input gives the same output twice
    again, _ = net(x)
    torch.testing.assert_close(logits, again)
    if memory != "none":
        # carrying the memory over (the no-wipe variant) changes what the network outputs
        carried, _ = net(x, state._replace(hidden=state.hidden * 0, cell=state.cell * 0))
        assert not torch.allclose(carried, logits)


def test_step_by_step_equals_forward_and_trace() -> None:
    torch.manual_seed(1)
    net = MemoryAugmentedNetwork(4, 2, controller=8, memory="ntm", rows=6, width=3)
    x = torch.randn(2, 5, 4)
    trace: dict[str, list[torch.Tensor]] = {}
    whole, _ = net(x, trace=trace)
    state = net.initial_state(2, x.device, x.dtype)
    steps = []
    for t in range(5):
        out, state = net.step(x[:, t], state)
        steps.append(out)
    torch.testing.assert_close(whole, torch.stack(steps, 1))
    assert len(trace["read"]) == 5 and trace["write"][0].shape == (2, 1, 6)
    torch.testing.assert_close(trace["read"][3].sum(-1), torch.ones(2, 1))


def test_lrua_network_uses_the_library_step() -> None:
    torch.manual_seed(2)
    net = MemoryAugmentedNetwork(5, 2, controller=8, memory="lrua", rows=7, width=4, read_heads=2)
    x = torch.randn(3, 1, 5)
    state = net.initial_state(3, x.device, x.dtype)
    _, after = net.step(x[:, 0], state)
    h, _ = net.controller(torch.cat([x[:, 0], state.reads], -1), (state.hidden, state.cell))
    raw = net.heads(h).reshape(3, 2, 6)
    reads, expected, _, _ = lrua.step(
        state.memory,
        torch.tanh(raw[..., :4]),
        raw[..., 4],
        decay=net.usage_decay,
        strength=torch.nn.functional.softplus(raw[..., 5]),
    )
    torch.testing.assert_close(after.memory.memory, expected.memory)
    torch.testing.assert_close(after.reads, reads.reshape(3, -1))


def test_unknown_memory() -> None:
    with pytest.raises(ValueError, match="memory must be one of"):
        MemoryAugmentedNetwork(2, 2, memory="tape")
