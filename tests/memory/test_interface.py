"""The one interface of a differentiable memory, checked on every registered memory, and the
memory-augmented network as nothing but a controller composed with a memory object."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import pytest
import torch
from torch.nn import functional as F

from mnemeta.algorithms.mann import MemoryAugmentedNetwork
from mnemeta.errors import ConfigError
from mnemeta.memory import LRUAConfig, LRUAMemory, Memory, NTMMemory, NTMMemoryConfig, lrua
from mnemeta.memory.interface import check_raw
from mnemeta.registry import MEMORIES, MemorySpec

NAMES = MEMORIES.names()  # the memories mnemeta registers (read before any test adds one)


def _memory(name: str) -> Memory[Any]:
    spec = MEMORIES.get(name)
    memory: Memory[Any] = spec.build(spec.config())
    return memory


def _tensors(state: Any) -> list[torch.Tensor]:
    return list(state)


def test_the_papers_memories_are_registered() -> None:
    assert {"ntm", "lrua", "none"} <= set(NAMES)
    for spec in MEMORIES:
        assert dataclasses.is_dataclass(spec.config), spec.name


@pytest.mark.parametrize("name", NAMES)
def test_init_state_and_step_shapes_and_the_carry(name: str) -> None:
    memory = _memory(name)
    assert isinstance(memory, Memory)
    batch = 3
    state = memory.init_state(batch, "cpu", torch.float64)
    # A NamedTuple of batch-first tensors: the recipes detach, save and rebuild it field by field.
    assert hasattr(state, "_fields")
    for t in _tensors(state):
        assert isinstance(t, torch.Tensor) and t.shape[0] == batch and t.dtype == torch.float64
    torch.manual_seed(0)
    raw = torch.randn(batch, memory.raw_size, dtype=torch.float64)
    reads, new, w_read, w_write = memory.step(state, raw)
    assert reads.shape == (batch, memory.read_size)
    assert type(new) is type(state)
    assert [t.shape for t in _tensors(new)] == [t.shape for t in _tensors(state)]
    assert w_read.dim() == 3 and w_write.dim() == 3
    assert w_read.shape[0] == batch and w_write.shape[0] == batch
    # The no-wipe variant's carry: a state rebuilt from its detached tensors steps the same.
    rebuilt = type(new)(*(t.detach().clone() for t in _tensors(new)))
    again = torch.randn(batch, memory.raw_size, dtype=torch.float64)
    expected, _, _, _ = memory.step(new, again)
    got, _, _, _ = memory.step(rebuilt, again)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", NAMES)
def test_raw_of_the_wrong_width_fails_clearly(name: str) -> None:
    memory = _memory(name)
    state = memory.init_state(2, "cpu", torch.float32)
    widths = [memory.raw_size + 1] + ([memory.raw_size - 1] if memory.raw_size else [])
    for width in widths:
        with pytest.raises(ValueError, match=rf"raw_size={memory.raw_size}\), got \(2, {width}\)"):
            memory.step(state, torch.zeros(2, width))


@pytest.mark.parametrize("name", NAMES)
def test_every_raw_output_is_read(name: str) -> None:
    """raw_size is not overstated: each of the raw outputs moves something the step returns.

    Checked at the second step: on a fresh memory every row is the same constant, so a read
    key's content weights are uniform whatever the key and its gradient is exactly zero."""
    memory = _memory(name)
    torch.manual_seed(1)
    state = memory.init_state(2, "cpu", torch.float64)
    _, state, _, _ = memory.step(state, torch.randn(2, memory.raw_size, dtype=torch.float64))
    raw = torch.randn(2, memory.raw_size, dtype=torch.float64, requires_grad=True)
    outputs = memory.step(state, raw)
    flat = torch.cat([outputs[0].flatten(), *(t.flatten() for t in _tensors(outputs[1]))])
    if memory.raw_size == 0:
        return
    (grad,) = torch.autograd.grad((flat * torch.randn_like(flat)).sum(), raw)
    dead = (grad.abs().sum(0) == 0).nonzero().flatten().tolist()
    assert dead == [], f"raw outputs {dead} of {memory.raw_size} change nothing"


def _hand_loop(net: MemoryAugmentedNetwork, memory: Memory[Any], x: torch.Tensor) -> torch.Tensor:
    """The network's recurrence written out: controller, head layer, memory step, output."""
    batch, size = x.shape[0], net.controller.hidden_size
    h = torch.zeros(batch, size, dtype=x.dtype)
    c = torch.zeros(batch, size, dtype=x.dtype)
    reads = torch.zeros(batch, memory.read_size, dtype=x.dtype)
    state = memory.init_state(batch, x.device, x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        h, c = net.controller(torch.cat([x[:, t], reads], -1), (h, c))
        raw = net.heads(h) if net.heads is not None else h[:, :0]
        reads, state, _, _ = memory.step(state, raw)
        outputs.append(net.output(torch.cat([h, reads], -1)))
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("name", NAMES)
def test_network_is_its_memory_stepped_by_hand(name: str) -> None:
    memory = _memory(name)
    torch.manual_seed(2)
    net = MemoryAugmentedNetwork(5, 3, controller=8, memory=memory).double()
    assert net.memory is memory
    assert net.controller.input_size == 5 + memory.read_size
    assert (net.heads.out_features if net.heads is not None else 0) == memory.raw_size
    assert net.output.in_features == 8 + memory.read_size
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    logits, _ = net(x)
    # The same ops in the same order (concatenating an empty read vector copies h unchanged),
    # so equal to the last bit.
    assert torch.equal(logits, _hand_loop(net, memory, x))


@pytest.mark.parametrize(
    ("name", "keys", "memory"),
    [
        (
            "ntm",
            dict(rows=9, width=4, read_heads=2, write_heads=3, shift_range=2),
            NTMMemory(NTMMemoryConfig(rows=9, width=4, read_heads=2, write_heads=3, shift_range=2)),
        ),
        (
            "lrua",
            dict(rows=9, width=4, read_heads=2, usage_decay=0.9, initial_strength=3.0),
            LRUAMemory(
                LRUAConfig(rows=9, width=4, read_heads=2, usage_decay=0.9, initial_strength=3.0)
            ),
        ),
        (
            "lrua",
            dict(key_strength=False),
            LRUAMemory(LRUAConfig(rows=128, width=20, read_heads=1, key_strength=False)),
        ),
    ],
)
def test_a_name_and_keywords_build_the_memory_object(
    name: str, keys: dict[str, Any], memory: Memory[Any]
) -> None:
    """Each keyword reaches the key of the same name (every value distinct, so a swap shows),
    and the network built from the name is the network built from the object."""
    torch.manual_seed(3)
    by_name = MemoryAugmentedNetwork(5, 3, controller=8, memory=name, **keys)
    torch.manual_seed(3)
    by_object = MemoryAugmentedNetwork(5, 3, controller=8, memory=memory)
    assert by_name.memory == memory
    a, b = by_name.state_dict(), by_object.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_lrua_head_bias_starts_key_strength_at_initial_strength() -> None:
    biases = {}
    for strength in (3.0, 7.0):
        torch.manual_seed(4)
        net = MemoryAugmentedNetwork(
            5, 3, controller=8, memory="lrua", width=4, read_heads=2, initial_strength=strength
        )
        assert net.heads is not None
        biases[strength] = net.heads.bias.detach().double().view(2, 6)  # per head: key 4, α, β
    for strength, bias in biases.items():
        # The bias is float32: softplus⁻¹(s) rounds by at most 2⁻²⁴·|s| ≈ 4e-7, softplus' < 1.
        torch.testing.assert_close(
            F.softplus(bias[:, 5]),
            torch.full((2,), strength, dtype=torch.float64),
            atol=1e-6,
            rtol=0,
        )
    # Only β's entry is set: the keys' and the gate's keep PyTorch's initialisation.
    assert torch.equal(biases[3.0][:, :5], biases[7.0][:, :5])
    # Without β nothing is set: every bias stays in PyTorch's U(±1/√fan_in) (β would be ≈ 3).
    plain = MemoryAugmentedNetwork(
        5, 3, controller=8, memory="lrua", width=4, read_heads=2, key_strength=False
    )
    assert plain.heads is not None and plain.heads.bias.shape == (10,)
    assert plain.heads.bias.abs().max() <= 8**-0.5


def test_memory_keywords_beside_a_memory_object_are_refused() -> None:
    with pytest.raises(ConfigError, match="width was given to MemoryAugmentedNetwork too"):
        MemoryAugmentedNetwork(5, 3, memory=NTMMemory(), width=7)
    with pytest.raises(ConfigError, match="memory must be a name"):
        MemoryAugmentedNetwork(5, 3, memory=object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: NTMMemoryConfig(rows=0),
        lambda: NTMMemoryConfig(shift_range=-1),
        lambda: LRUAConfig(read_heads=0),
        lambda: LRUAConfig(rows=3, read_heads=4),
        lambda: LRUAConfig(usage_decay=1.5),
        lambda: LRUAConfig(initial_strength=0.0),
    ],
)
def test_out_of_range_keys_are_config_errors(make: Any) -> None:
    with pytest.raises(ConfigError, match="memory: "):
        make()


class _SumState(NamedTuple):
    total: torch.Tensor  # (B, W)


@dataclasses.dataclass(frozen=True)
class _SumConfig:
    width: int = 3


@dataclasses.dataclass(frozen=True)
class _RunningSum:
    """A memory written outside mnemeta.memory: it adds tanh(raw) to a running total and
    reads the total."""

    config: _SumConfig = dataclasses.field(default_factory=_SumConfig)

    @property
    def raw_size(self) -> int:
        return self.config.width

    @property
    def read_size(self) -> int:
        return self.config.width

    def init_head_bias(self, bias: torch.Tensor) -> None:
        bias.zero_()

    def init_state(self, batch: int, device: Any, dtype: torch.dtype) -> _SumState:
        return _SumState(torch.zeros(batch, self.config.width, device=device, dtype=dtype))

    def step(self, state: _SumState, raw: torch.Tensor) -> Any:
        check_raw(self, raw)
        total = state.total + torch.tanh(raw)
        weights = total.new_zeros(total.shape[0], 0, 0)
        return total, _SumState(total), weights, weights


@dataclasses.dataclass(frozen=True)
class _TapeConfig:
    length: int = 5  # a key the network has no keyword argument for


def test_a_newly_registered_memory_is_built_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a memory is registering it: the network needs no edit to build it by name."""
    spec = MemorySpec("running_sum", _SumConfig, "test", build=_RunningSum)
    monkeypatch.setitem(MEMORIES._entries, spec.name, spec)
    torch.manual_seed(5)
    net = MemoryAugmentedNetwork(5, 3, controller=8, memory="running_sum", width=4).double()
    assert net.memory == _RunningSum(_SumConfig(width=4))
    assert net.heads is not None and torch.equal(
        net.heads.bias, torch.zeros(4, dtype=torch.float64)
    )
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    logits, final = net(x)
    assert torch.equal(logits, _hand_loop(net, net.memory, x))
    assert final.memory.total.abs().sum() > 0

    tape = MemorySpec("tape", _TapeConfig, "test", build=lambda c: None)
    monkeypatch.setitem(MEMORIES._entries, tape.name, tape)
    with pytest.raises(ConfigError, match="memory 'tape' reads length, which"):
        MemoryAugmentedNetwork(5, 3, memory="tape")


def test_wrong_width_message_names_the_memory_and_the_fix() -> None:
    memory = LRUAMemory(LRUAConfig(rows=4, width=2, read_heads=1))
    state = memory.init_state(2, "cpu", torch.float32)
    with pytest.raises(
        ValueError,
        match=rf"^LRUAMemory\.step takes raw head outputs of shape \(batch, raw_size="
        rf"{memory.raw_size}\), got \(2, 9\); size the controller's head layer as "
        r"nn\.Linear\(controller, memory\.raw_size\)$",
    ):
        memory.step(state, torch.zeros(2, 9))


def test_no_memory_state_on_the_asked_device_and_dtype() -> None:
    """The LSTM baseline's empty state: (B, 0) reads and (B, 0, 0) weights, on the device and of
    the dtype asked (meta: made on the CPU by default it would fail there as on a GPU)."""
    memory = MEMORIES.get("none").build(MEMORIES.get("none").config())
    for device, dtype in [
        (torch.device("meta"), torch.float32),
        (torch.device("cpu"), torch.float64),
    ]:
        state = memory.init_state(3, device, dtype)
        assert state.reads.shape == (3, 0) and state.weights.shape == (3, 0, 0)
        for x in state:
            assert x.device == device and x.dtype == dtype
        reads, _, w_read, w_write = memory.step(
            state, torch.zeros(3, 0, device=device, dtype=dtype)
        )
        assert reads.shape == (3, 0) and w_read.shape == w_write.shape == (3, 0, 0)


def test_lrua_memory_step_is_the_pure_step_with_its_config() -> None:
    """Without key strength the reads use β = 1 (the paper's equation) and the usage decays by
    the configured γ (0.5 here, not the function's default 0.95)."""
    memory = LRUAMemory(
        LRUAConfig(rows=5, width=3, read_heads=2, usage_decay=0.5, key_strength=False)
    )
    g = torch.Generator().manual_seed(0)
    state = memory.init_state(2, "cpu", torch.float64)
    raw = torch.randn(2, memory.raw_size, generator=g, dtype=torch.float64)
    for _ in range(2):  # the second step starts from a used memory, where γ shows
        reads, new, _, _ = memory.step(state, raw)
        per_head = raw.view(2, 2, memory.per_head)
        want = lrua.step(
            state, torch.tanh(per_head[..., :3]), per_head[..., 3], decay=0.5, strength=1.0
        )
        torch.testing.assert_close(reads, want[0].reshape(2, -1), rtol=0, atol=0)
        torch.testing.assert_close(new.usage, want[1].usage, rtol=0, atol=0)
        state = new


def test_config_bounds_are_inclusive_where_documented() -> None:
    """As many heads as rows, γ of 0 or 1, any positive initial strength and shift range 0 are
    valid; the messages name the key."""
    LRUAConfig(rows=4, read_heads=4)
    LRUAConfig(usage_decay=0.0)
    LRUAConfig(usage_decay=1.0)
    LRUAConfig(initial_strength=0.5)
    NTMMemoryConfig(shift_range=0)
    with pytest.raises(
        ConfigError,
        match=r"LRUA memory: initial_strength is a softplus output and must be > 0, got 0\.0",
    ):
        LRUAConfig(initial_strength=0.0)


def test_memory_argument_messages_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal of MemoryAugmentedNetwork's memory argument, word for word."""
    names = ", ".join(MEMORIES.names())
    with pytest.raises(
        ConfigError,
        match=rf"^memory must be a name \({names}\) or an object with raw_size, read_size, "
        r"init_head_bias, init_state and step; got 5$",
    ):
        MemoryAugmentedNetwork(5, 3, memory=5)  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError,
        match=r"^memory is an object, which carries its own keys, but width was given to "
        r"MemoryAugmentedNetwork too; set them in the memory's config instead$",
    ):
        MemoryAugmentedNetwork(5, 3, memory=LRUAMemory(), width=3)
    with pytest.raises(
        ConfigError,
        match=r"^memory is an object, which carries its own keys, but rows, width were given",
    ):
        MemoryAugmentedNetwork(5, 3, memory=LRUAMemory(), rows=4, width=3)
    with pytest.raises(
        ConfigError, match=rf"^memory must be one of {names} \(or a memory object\); got 'tape'$"
    ):
        MemoryAugmentedNetwork(5, 3, memory="tape")
    tape = MemorySpec("tape", _TapeConfig, "test", build=lambda c: None)
    monkeypatch.setitem(MEMORIES._entries, tape.name, tape)
    with pytest.raises(
        ConfigError,
        match=r"^memory 'tape' reads length, which MemoryAugmentedNetwork takes no argument "
        r"for; build it \(MEMORIES\.get\('tape'\)\.build\(config\)\) and pass the object as "
        r"memory=$",
    ):
        MemoryAugmentedNetwork(5, 3, memory="tape")


def test_a_memory_with_one_raw_output_gets_a_head_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = MemorySpec("running_sum", _SumConfig, "test", build=_RunningSum)
    monkeypatch.setitem(MEMORIES._entries, spec.name, spec)
    net = MemoryAugmentedNetwork(5, 3, controller=8, memory="running_sum", width=1)
    assert net.memory.raw_size == 1
    assert net.heads is not None and net.heads.out_features == 1


@dataclasses.dataclass
class _TwoTapesConfig:
    length: int = 5  # two keys the network has no keyword argument for
    speed: int = 1


def test_unread_keys_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = MemorySpec("tapes", _TwoTapesConfig, "test", build=lambda c: None)
    monkeypatch.setitem(MEMORIES._entries, spec.name, spec)
    with pytest.raises(ConfigError, match=r"^memory 'tapes' reads length, speed, which "):
        MemoryAugmentedNetwork(5, 3, memory="tapes")
