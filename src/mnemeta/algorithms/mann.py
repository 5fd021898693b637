"""Memory-augmented recurrent networks: an LSTM controller with an NTM or LRUA memory.

One module, three memories, so the baselines are trained exactly like the models:

- ``memory="ntm"``: the Neural Turing Machine (Graves et al. 2014): read and write heads with
  content and location addressing, erase and add vectors.
- ``memory="lrua"``: the MANN of Santoro et al. (2016): content-based reads, least-recently-used
  writes of the read keys.
- ``memory="none"``: the LSTM baseline of both papers.

At step t the controller sees the input xₜ and the previous read vectors rₜ₋₁; the output is
a linear map of the controller's hidden state hₜ and the new read vectors rₜ (Santoro et al.,
eq. for oₜ; Graves's controller emits the output from the same two). Memory is wiped at the
start of :meth:`forward` unless a state is passed in (the no-wipe variant carries it over).
Time is a Python loop (the recurrence); heads and rows are batched tensor ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mnemeta.errors import ConfigError
from mnemeta.memory import lrua, ntm
from mnemeta.memory.addressing import head_param_size, head_params
from mnemeta.registry import LEARNERS, BuildContext, LearnerConfig, LearnerSpec

MEMORIES = ("ntm", "lrua", "none")


class RecurrentState(NamedTuple):
    hidden: Tensor  # (B, controller)
    cell: Tensor  # (B, controller)
    reads: Tensor  # (B, R * W): the last read vectors, fed to the controller
    memory: Any  # NTMState | LRUAState | None


class MemoryAugmentedNetwork(nn.Module):
    """An LSTM controller with an external memory; ``forward`` maps ``(B, T, inputs)`` to
    ``(B, T, outputs)`` logits.

    Args:
        inputs, outputs: sizes of xₜ and of the output logits.
        controller: LSTM units (NTM copy task: 100; MANN Omniglot: 200).
        memory: ``"ntm"``, ``"lrua"`` or ``"none"``.
        rows, width: memory shape N × W (copy: 128 × 20; Omniglot: 128 × 40).
        read_heads: R (copy: 1; MANN: 4). The NTM has ``write_heads`` write heads; an LRUA
            head reads and writes with one key.
        shift_range: NTM shifts −R … R (the copy task needs only ±1).
        usage_decay: LRUA's γ.
        key_strength: LRUA: learn a key strength β per read head (the NTM's content
            addressing); False is the paper's equation, β = 1, whose softmax over 128 cosines
            in [−1, 1] can never focus on one row.
        initial_strength: LRUA: the β a fresh network starts from (with ``key_strength``).
    """

    def __init__(
        self,
        inputs: int,
        outputs: int,
        *,
        controller: int = 100,
        memory: str = "ntm",
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
        if memory not in MEMORIES:
            raise ConfigError(f"memory must be one of {MEMORIES}; got {memory!r}")
        self.memory_kind = memory
        self.rows, self.width = rows, width
        self.read_heads = read_heads if memory != "none" else 0
        self.write_heads = write_heads
        self.shift_range = shift_range
        self.usage_decay = usage_decay
        self.key_strength = key_strength
        read_size = self.read_heads * width
        self.controller = nn.LSTMCell(inputs + read_size, controller)
        if memory == "ntm":
            per_head = head_param_size(width, shift_range)
            # Read heads: addressing only; write heads: addressing, erase and add vectors.
            self.heads = nn.Linear(
                controller, read_heads * per_head + write_heads * (per_head + 2 * width)
            )
        elif memory == "lrua":
            # Per head: the key, the write gate α, and (optionally) the key strength β.
            per_head = width + 1 + int(key_strength)
            self.heads = nn.Linear(controller, read_heads * per_head)
            if key_strength:
                # Start β near `initial_strength`, not softplus(0) = 0.69: with β < 1 the reads
                # are a near-uniform average of 128 rows, so their gradient is weak and training
                # sits on the chance plateau far longer (seen in our runs).
                with torch.no_grad():
                    bias = self.heads.bias.view(read_heads, per_head)
                    bias[:, width + 1] = initial_strength + math.log(-math.expm1(-initial_strength))
        self.output = nn.Linear(controller + read_size, outputs)

    def initial_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> RecurrentState:
        """A fresh controller and a wiped memory for ``batch`` sequences."""
        size = self.controller.hidden_size
        zeros = torch.zeros(batch, size, device=device, dtype=dtype)
        memory: Any = None
        if self.memory_kind == "ntm":
            memory = ntm.init_state(
                batch,
                self.rows,
                self.width,
                read_heads=self.read_heads,
                write_heads=self.write_heads,
                device=device,
                dtype=dtype,
            )
        elif self.memory_kind == "lrua":
            memory = lrua.init_state(
                batch, self.rows, self.width, heads=self.read_heads, device=device, dtype=dtype
            )
        reads = torch.zeros(batch, self.read_heads * self.width, device=device, dtype=dtype)
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
        if self.memory_kind == "none":
            return self.output(h), RecurrentState(h, c, state.reads, None)
        batch = x.shape[0]
        raw = self.heads(h)
        memory: ntm.NTMState | lrua.LRUAState
        if self.memory_kind == "ntm":
            reads, memory, w_read, w_write = self._ntm_step(state.memory, raw, batch)
        else:
            reads, memory, w_read, w_write = self._lrua_step(state.memory, raw, batch)
        if trace is not None:
            trace.setdefault("read", []).append(w_read.detach())
            trace.setdefault("write", []).append(w_write.detach())
        flat_reads = reads.reshape(batch, -1)
        logits = self.output(torch.cat([h, flat_reads], dim=-1))
        return logits, RecurrentState(h, c, flat_reads, memory)

    def _ntm_step(
        self, state: ntm.NTMState, raw: Tensor, batch: int
    ) -> tuple[Tensor, ntm.NTMState, Tensor, Tensor]:
        per_head = head_param_size(self.width, self.shift_range)
        n_read = self.read_heads * per_head
        read_raw = raw[:, :n_read].reshape(batch, self.read_heads, per_head)
        write_raw = raw[:, n_read:].reshape(batch, self.write_heads, per_head + 2 * self.width)
        read_params = head_params(read_raw, self.width, self.shift_range)
        write_params = head_params(write_raw[..., :per_head], self.width, self.shift_range)
        erase = torch.sigmoid(write_raw[..., per_head : per_head + self.width])
        add = torch.tanh(write_raw[..., per_head + self.width :])
        # Read the memory as it was (Mₜ₋₁), then write: the reads feed the output of this step
        # and the controller of the next.
        reads, w_read = ntm.read(state, read_params)
        state = ntm.write(state, write_params, erase, add)._replace(read_weights=w_read)
        return reads, state, w_read, state.write_weights

    def _lrua_step(
        self, state: lrua.LRUAState, raw: Tensor, batch: int
    ) -> tuple[Tensor, lrua.LRUAState, Tensor, Tensor]:
        per_head = self.width + 1 + int(self.key_strength)
        raw = raw.reshape(batch, self.read_heads, per_head)
        keys = torch.tanh(raw[..., : self.width])
        gate = raw[..., self.width]
        strength: Tensor | float = 1.0
        if self.key_strength:
            strength = nn.functional.softplus(raw[..., self.width + 1])
        reads, state, w_read, w_write = lrua.step(
            state, keys, gate, decay=self.usage_decay, strength=strength
        )
        return reads, state, w_read, w_write


@dataclass
class LSTMConfig(LearnerConfig):
    controller: int = 100  # LSTM units (Graves's copy-task baseline: 256 in its preset)
    # One-shot episodes: start each episode from a fresh state (False: carry it over, Santoro's
    # no-wipe variant).
    wipe_memory: bool = True


@dataclass
class NTMConfig(LSTMConfig):
    memory_rows: int = 128  # N (Graves et al. §4)
    memory_width: int = 20  # W (copy task)
    read_heads: int = 1  # the copy task needs one read and one write head
    write_heads: int = 1
    shift_range: int = 1  # location shifts -R..R; copying needs only +-1


@dataclass
class MANNConfig(LSTMConfig):
    controller: int = 200  # Santoro et al.'s Omniglot controller
    memory_rows: int = 128  # N
    memory_width: int = 40  # W
    read_heads: int = 4  # R; each LRUA head writes with its read key
    usage_decay: float = 0.95  # γ
    key_strength: bool = True  # learn β for the reads (False: the paper's β = 1)
    initial_strength: float = 10.0  # β at initialisation (softplus(0) = 0.69 trains slowly)


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
