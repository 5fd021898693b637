"""Memory-augmented recurrent networks: an LSTM controller with an NTM or LRUA memory.

One module, any memory of ``mnemeta.registry.MEMORIES``, so the baselines are trained exactly
like the models:

- ``memory="ntm"``: the Neural Turing Machine (Graves et al. 2014): read and write heads with
  content and location addressing, erase and add vectors.
- ``memory="lrua"``: the MANN of Santoro et al. (2016): content-based reads, least-recently-used
  writes of the read keys.
- ``memory="none"``: the LSTM baseline of both papers.

At step t the controller sees the input xₜ and the previous read vectors rₜ₋₁; the output is
a linear map of the controller's hidden state hₜ and the new read vectors rₜ (Santoro et al.,
eq. for oₜ; Graves's controller emits the output from the same two). A linear head layer maps
hₜ to the memory's raw head outputs, and the memory object (mnemeta.memory.interface) turns
them into reads and writes. Memory is wiped at the start of :meth:`forward` unless a state is
passed in (the no-wipe variant carries it over). Time is a Python loop (the recurrence); heads
and rows are batched tensor ops.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mnemeta.checks import checked
from mnemeta.errors import ConfigError
from mnemeta.memory import Memory  # importing mnemeta.memory registers its memories in MEMORIES
from mnemeta.registry import LEARNERS, MEMORIES, BuildContext, LearnerConfig, LearnerSpec


class RecurrentState(NamedTuple):
    hidden: Tensor  # (B, controller)
    cell: Tensor  # (B, controller)
    reads: Tensor  # (B, read_size): the last read vectors, fed to the controller
    memory: Any  # the memory's own state: NTMState | LRUAState | NoMemoryState


class MemoryAugmentedNetwork(nn.Module):
    """An LSTM controller with an external memory; ``forward`` maps ``(B, T, inputs)`` to
    ``(B, T, outputs)`` logits.

    Args:
        inputs, outputs: sizes of xₜ and of the output logits.
        controller: LSTM units (NTM copy task: 100; MANN Omniglot: 200).
        memory: a name in ``MEMORIES`` (``"ntm"``, ``"lrua"`` or ``"none"``), built from the
            keyword arguments below that its config reads; or a memory object (e.g.
            ``LRUAMemory(LRUAConfig(...))``), which carries its own keys, so the arguments
            below must then stay at their defaults.
        rows, width: memory shape N × W (copy: 128 × 20; Omniglot: 128 × 40).
        read_heads: R (copy: 1; MANN: 4). The NTM has ``write_heads`` write heads; an LRUA
            head reads and writes with one key.
        shift_range: NTM shifts −R … R (the copy task needs only ±1).
        usage_decay: LRUA's γ.
        key_strength: LRUA: learn a key strength β per read head (the NTM's content
            addressing); False is the paper's equation, β = 1, whose softmax over 128 cosines
            in [−1, 1] can never focus on one row.
        initial_strength: LRUA: the β a fresh network starts from (with ``key_strength``).

    The parameters are created in the order controller, heads, output (the same seed gives
    the same weights); a memory with ``raw_size`` 0 gets no head layer.
    """

    heads: nn.Linear | None

    def __init__(
        self,
        inputs: int,
        outputs: int,
        *,
        controller: int = 100,
        memory: str | Memory[Any] = "ntm",
        rows: int = 128,
        width: int = 20,
        read_heads: int = 1,
        write_heads: int = 1,
        shift_range: int = 1,
        usage_decay: float = 0.95,
        key_strength: bool = True,
        initial_strength: float = 10.0,
    ) -> None:
        super().__init__()
        # The constructor's arguments, stored as given. They describe the memory only when it
        # is given by name; the memory object (self.memory, its keys in .config) is what reads.
        self.rows, self.width = rows, width
        self.read_heads, self.write_heads = read_heads, write_heads
        self.shift_range = shift_range
        self.usage_decay = usage_decay
        self.key_strength, self.initial_strength = key_strength, initial_strength
        self.memory: Memory[Any] = _build_memory(
            memory,
            rows=rows,
            width=width,
            read_heads=read_heads,
            write_heads=write_heads,
            shift_range=shift_range,
            usage_decay=usage_decay,
            key_strength=key_strength,
            initial_strength=initial_strength,
        )
        read_size = self.memory.read_size
        self.controller = nn.LSTMCell(inputs + read_size, controller)
        self.heads = None
        if self.memory.raw_size > 0:
            self.heads = nn.Linear(controller, self.memory.raw_size)
            with torch.no_grad():
                self.memory.init_head_bias(self.heads.bias)
        self.output = nn.Linear(controller + read_size, outputs)

    def initial_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> RecurrentState:
        """A fresh controller and a wiped memory for ``batch`` sequences."""
        size = self.controller.hidden_size
        zeros = torch.zeros(batch, size, device=device, dtype=dtype)
        memory = self.memory.init_state(batch, device, dtype)
        reads = torch.zeros(batch, self.memory.read_size, device=device, dtype=dtype)
        return RecurrentState(zeros, zeros.clone(), reads, memory)

    def forward(
        self,
        x: Tensor,
        state: RecurrentState | None = None,
        *,
        trace: dict[str, list[Tensor]] | None = None,
    ) -> tuple[Tensor, RecurrentState]:
        """``x`` ``(B, T, inputs)`` -> logits ``(B, T, outputs)`` and the final state.

        ``state=None`` wipes the memory first. ``trace``, if given, collects the read and write
        weights of every step (``"read"``/``"write"`` lists of ``(B, H, N)``) for plots."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        outputs = []
        for t in range(x.shape[1]):
            out, state = self.step(x[:, t], state, trace)
            outputs.append(out)
        return torch.stack(outputs, dim=1), state

    def step(
        self, x: Tensor, state: RecurrentState, trace: dict[str, list[Tensor]] | None = None
    ) -> tuple[Tensor, RecurrentState]:
        """One time step: ``(B, inputs)`` -> logits ``(B, outputs)`` and the next state."""
        h, c = self.controller(torch.cat([x, state.reads], dim=-1), (state.hidden, state.cell))
        # A memory without heads (raw_size 0, the LSTM baseline) has no head layer: its raw
        # outputs are a (B, 0) view.
        raw = h[:, :0] if self.heads is None else self.heads(h)
        reads, memory, w_read, w_write = self.memory.step(state.memory, raw)
        if trace is not None:
            trace.setdefault("read", []).append(w_read.detach())
            trace.setdefault("write", []).append(w_write.detach())
        # An empty read vector adds nothing to the output's input: skip the copy torch.cat
        # would make (the LSTM baseline then outputs self.output(h), as it always did).
        features = torch.cat([h, reads], dim=-1) if self.memory.read_size else h
        logits = self.output(features)
        return logits, RecurrentState(h, c, reads, memory)


def _build_memory(memory: str | Memory[Any], **keys: Any) -> Memory[Any]:
    """The memory object a network holds: built from the registry's entry for a name, with the
    network's keyword arguments that its config reads; or the object given, unchanged."""
    if not isinstance(memory, str):
        if not isinstance(memory, Memory):
            raise ConfigError(
                f"memory must be a name ({', '.join(MEMORIES.names())}) or an object with "
                f"raw_size, read_size, init_head_bias, init_state and step; got {memory!r}"
            )
        defaults = inspect.signature(MemoryAugmentedNetwork.__init__).parameters
        changed = sorted(k for k, v in keys.items() if v != defaults[k].default)
        if changed:
            raise ConfigError(
                f"memory is an object, which carries its own keys, but {', '.join(changed)} "
                f"{'was' if len(changed) == 1 else 'were'} given to MemoryAugmentedNetwork too; "
                "set them in the memory's config instead"
            )
        return memory
    if memory not in MEMORIES:
        raise ConfigError(
            f"memory must be one of {', '.join(MEMORIES.names())} (or a memory object); "
            f"got {memory!r}"
        )
    spec = MEMORIES.get(memory)
    unread = [k for k in spec.key_names() if k not in keys]
    if unread:
        raise ConfigError(
            f"memory {memory!r} reads {', '.join(unread)}, which MemoryAugmentedNetwork takes "
            f"no argument for; build it (MEMORIES.get({memory!r}).build(config)) and pass "
            "the object as memory="
        )
    return spec.build(spec.config(**{k: keys[k] for k in spec.key_names()}))


@dataclass
class LSTMConfig(LearnerConfig):
    controller: int = checked(
        100, ge=1
    )  # LSTM units (Graves's copy-task baseline: 256 in its preset)
    # One-shot episodes: start each episode from a fresh state (False: carry it over, Santoro's
    # no-wipe variant).
    wipe_memory: bool = True


@dataclass
class NTMConfig(LSTMConfig):
    memory_rows: int = checked(128, ge=1)  # N (Graves et al. §4)
    memory_width: int = checked(20, ge=1)  # W (copy task)
    read_heads: int = checked(1, ge=1)  # the copy task needs one read and one write head
    write_heads: int = checked(1, ge=1)
    shift_range: int = checked(1, ge=0)  # location shifts -R..R; copying needs only +-1


@dataclass
class MANNConfig(LSTMConfig):
    controller: int = checked(200, ge=1)  # Santoro et al.'s Omniglot controller
    memory_rows: int = checked(128, ge=1)  # N
    memory_width: int = checked(40, ge=1)  # W
    read_heads: int = checked(4, ge=1)  # R; each LRUA head writes with its read key
    usage_decay: float = checked(0.95, ge=0, le=1)  # γ
    key_strength: bool = True  # learn β for the reads (False: the paper's β = 1)
    initial_strength: float = checked(
        10.0, gt=0
    )  # β at initialisation (softplus(0) = 0.69 trains slowly)


def _builder(memory: str) -> Any:
    def build(cfg: LSTMConfig, ctx: BuildContext) -> MemoryAugmentedNetwork:
        kwargs: dict[str, Any] = {}
        if isinstance(cfg, NTMConfig):
            kwargs = dict(
                rows=cfg.memory_rows,
                width=cfg.memory_width,
                read_heads=cfg.read_heads,
                write_heads=cfg.write_heads,
                shift_range=cfg.shift_range,
            )
        elif isinstance(cfg, MANNConfig):
            kwargs = dict(
                rows=cfg.memory_rows,
                width=cfg.memory_width,
                read_heads=cfg.read_heads,
                usage_decay=cfg.usage_decay,
                key_strength=cfg.key_strength,
                initial_strength=cfg.initial_strength,
            )
        (inputs,) = ctx.input_shape
        return MemoryAugmentedNetwork(
            inputs, ctx.outputs, controller=cfg.controller, memory=memory, **kwargs
        )

    return build


for _name, _config, _memory, _summary in (
    (
        "ntm",
        NTMConfig,
        "ntm",
        "Neural Turing Machine: LSTM with content+location heads (Graves 2014)",
    ),
    ("mann", MANNConfig, "lrua", "MANN: LSTM with an LRUA memory (Santoro et al. 2016)"),
    ("lstm", LSTMConfig, "none", "LSTM baseline of the memory-augmented networks, no memory"),
):
    LEARNERS.register(
        LearnerSpec(
            _name, _config, _summary, build=_builder(_memory), recipe="sequence", backbone=False
        )
    )
