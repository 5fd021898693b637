"""The memory-augmented network: shapes, the wipe, gradients, and agreement with the memory
library's pure functions (the module is the controller plus those functions, nothing hidden)."""

from __future__ import annotations

import pytest
import torch

from mnemeta.algorithms.mann import LSTMConfig, MANNConfig, MemoryAugmentedNetwork, NTMConfig
from mnemeta.memory import LRUAConfig, NTMMemoryConfig, lrua
from mnemeta.registry import LEARNERS, BuildContext


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


def test_registered_networks_build_from_their_configs() -> None:
    """What the CLI builds for ntm, mann and lstm: every config key reaches the network and its
    memory (non-default values, so a dropped key shows), sizes from the context."""
    ctx = BuildContext(input_shape=(6,), outputs=4)
    net = LEARNERS.get("ntm").build(
        NTMConfig(
            controller=9, memory_rows=7, memory_width=3, read_heads=2, write_heads=3, shift_range=2
        ),
        ctx,
    )
    assert isinstance(net, MemoryAugmentedNetwork)
    assert net.controller.hidden_size == 9 and net.output.out_features == 4
    assert net.controller.input_size == 6 + 2 * 3  # the input and the read vectors
    assert net.memory.config == NTMMemoryConfig(
        rows=7, width=3, read_heads=2, write_heads=3, shift_range=2
    )
    net = LEARNERS.get("mann").build(
        MANNConfig(
            controller=5,
            memory_rows=6,
            memory_width=2,
            read_heads=3,
            usage_decay=0.5,
            key_strength=False,
            initial_strength=2.0,
        ),
        ctx,
    )
    assert net.controller.hidden_size == 5 and net.output.out_features == 4
    assert net.memory.config == LRUAConfig(
        rows=6, width=2, read_heads=3, usage_decay=0.5, key_strength=False, initial_strength=2.0
    )
    assert net.initial_strength == 2.0 and net.usage_decay == 0.5
    net = LEARNERS.get("lstm").build(LSTMConfig(controller=3), ctx)
    assert net.controller.hidden_size == 3 and net.memory.read_size == 0 and net.heads is None
    assert net.controller.input_size == 6 and net.output.in_features == 3
    # The configs' defaults are the papers' (Graves et al.'s copy task, Santoro et al.'s MANN).
    ntm_default = LEARNERS.get("ntm").build(NTMConfig(), ctx).memory.config
    assert ntm_default == NTMMemoryConfig(rows=128, width=20, read_heads=1, write_heads=1)
    mann_default = LEARNERS.get("mann").build(MANNConfig(), ctx)
    assert mann_default.controller.hidden_size == 200
    assert mann_default.memory.config == LRUAConfig()


def test_network_defaults_are_the_copy_task_ntm() -> None:
    """MemoryAugmentedNetwork(inputs, outputs): a 100-unit controller over Graves et al.'s
    128 x 20 NTM with one read and one write head and shifts of -1..1."""
    net = MemoryAugmentedNetwork(9, 8)
    assert net.controller.hidden_size == 100
    assert net.memory.config == NTMMemoryConfig(
        rows=128, width=20, read_heads=1, write_heads=1, shift_range=1
    )
    assert (net.rows, net.width, net.read_heads, net.write_heads) == (128, 20, 1, 1)
    assert (net.shift_range, net.usage_decay) == (1, 0.95)
    assert (net.key_strength, net.initial_strength) == (True, 10.0)
    lrua_net = MemoryAugmentedNetwork(9, 8, memory="lrua", rows=6, width=2, read_heads=2)
    assert lrua_net.memory.config == LRUAConfig(
        rows=6, width=2, read_heads=2, usage_decay=0.95, key_strength=True, initial_strength=10.0
    )


def test_initial_state_on_the_asked_device_and_dtype() -> None:
    """A fresh state's every tensor on the device and of the dtype asked (meta: a tensor made
    on the CPU by default fails as on a GPU; float64 shows one made in float32): zeros for the
    controller and the reads, the memory's own wipe."""
    net = MemoryAugmentedNetwork(4, 2, controller=5, memory="lrua", rows=6, width=3, read_heads=2)
    for device, dtype in [
        (torch.device("meta"), torch.float32),
        (torch.device("cpu"), torch.float64),
    ]:
        state = net.initial_state(3, device, dtype)
        assert state.hidden.shape == state.cell.shape == (3, 5)
        assert state.reads.shape == (3, 6)
        for x in [state.hidden, state.cell, state.reads, *state.memory]:
            assert x.device == device and x.dtype == dtype
    state = net.initial_state(3, torch.device("cpu"), torch.float64)
    assert (state.hidden == 0).all() and (state.cell == 0).all() and (state.reads == 0).all()
    assert state.cell is not state.hidden  # separate tensors: the LSTM writes them apart
    torch.testing.assert_close(
        state.memory.least_used[0], torch.tensor([1.0, 1, 0, 0, 0, 0], dtype=torch.float64)
    )
