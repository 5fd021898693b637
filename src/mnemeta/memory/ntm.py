"""The Neural Turing Machine's memory (Graves et al. 2014, §3): explicit state, pure functions.

``init_state`` makes a fresh memory for a batch of sequences (calling it again *is* the wipe),
``read`` and ``write`` take a state and the heads' parameters and return new values; nothing is
mutated. Any number of read and write heads, all addressed in one batched call.

:class:`NTMMemory` is the same memory behind the :class:`~mnemeta.memory.interface.Memory`
interface (registered as ``"ntm"``): it parses a controller's raw head outputs and calls
:func:`read` then :func:`write`.

Shapes: memory ``(B, N, W)``; read weights ``(B, R, N)``; write weights ``(B, Hw, N)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from mnemeta.errors import ConfigError
from mnemeta.memory.addressing import HeadParams, address, head_param_size, head_params
from mnemeta.memory.interface import check_raw
from mnemeta.registry import MEMORIES, MemorySpec

#: The memory starts at this small constant, not zero: the cosine similarity of a key with an
#: all-zero row is 0/0, and a constant keeps every content weight defined (and uniform).
MEMORY_INIT = 1e-6


class NTMState(NamedTuple):
    memory: Tensor  # (B, N, W)
    read_weights: Tensor  # (B, R, N): the read heads' last weights
    write_weights: Tensor  # (B, Hw, N): the write heads' last weights


def init_state(
    batch: int,
    rows: int,
    width: int,
    *,
    read_heads: int = 1,
    write_heads: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> NTMState:
    """A wiped memory for ``batch`` sequences; every head starts focused on row 0, like a tape
    head at the start (so location-based shifts have somewhere to move from)."""
    memory = torch.full((batch, rows, width), MEMORY_INIT, device=device, dtype=dtype)
    start = torch.zeros(rows, device=device, dtype=dtype)
    start[0] = 1.0
    return NTMState(
        memory=memory,
        read_weights=start.expand(batch, read_heads, rows).clone(),
        write_weights=start.expand(batch, write_heads, rows).clone(),
    )


def read_memory(memory: Tensor, weights: Tensor) -> Tensor:
    """Eq. 2: r = Σᵢ w(i) Mᵢ for each head: ``(B, N, W), (B, H, N) -> (B, H, W)``."""
    return weights @ memory


def write_memory(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """Eqs. 3-4 for ``H`` write heads: M̃ = M ⊙ Πₕ (1 − wₕ eₕᵀ), then M = M̃ + Σₕ wₕ aₕᵀ.

    ``weights`` ``(B, H, N)``, ``erase`` ``(B, H, W)`` in [0, 1], ``add`` ``(B, H, W)``. The paper
    notes that the erasures of several heads commute (a product), and so do the additions.
    """
    keep = (1 - weights.unsqueeze(-1) * erase.unsqueeze(-2)).prod(dim=1)  # (B, N, W)
    return memory * keep + weights.transpose(1, 2) @ add


def read(state: NTMState, heads: HeadParams) -> tuple[Tensor, Tensor]:
    """Address the memory with the read heads' parameters (from their previous weights) and
    read: returns the read vectors ``(B, R, W)`` and the new read weights ``(B, R, N)``."""
    weights = address(state.memory, state.read_weights, heads)
    return read_memory(state.memory, weights), weights


def write(state: NTMState, heads: HeadParams, erase: Tensor, add: Tensor) -> NTMState:
    """Address with the write heads' parameters, then erase and add; returns the new state
    (the read weights are carried over unchanged)."""
    weights = address(state.memory, state.write_weights, heads)
    memory = write_memory(state.memory, weights, erase, add)
    return NTMState(memory=memory, read_weights=state.read_weights, write_weights=weights)


@dataclass(frozen=True)
class NTMMemoryConfig:
    """The NTM memory's keys (the defaults are Graves et al.'s copy task, §4.1)."""

    rows: int = 128  # N: memory locations
    width: int = 20  # W: the width of a location (a copy-task vector of 8 bits fits easily)
    read_heads: int = 1  # the copy task needs one read and one write head
    write_heads: int = 1
    shift_range: int = 1  # location shifts -R..R; copying needs only +-1

    def __post_init__(self) -> None:
        for name in ("rows", "width", "read_heads", "write_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"NTM memory: {name} must be at least 1, got {getattr(self, name)}"
                )
        if self.shift_range < 0:
            raise ConfigError(f"NTM memory: shift_range must be >= 0, got {self.shift_range}")


@dataclass(frozen=True)
class NTMMemory:
    """The NTM's memory behind the Memory interface.

    The raw outputs of one step are, in this order, each read head's addressing parameters
    (key, β, g, shift, γ: :func:`~mnemeta.memory.addressing.head_params`), then each write
    head's addressing parameters, erase vector (sigmoid) and add vector (tanh).
    """

    config: NTMMemoryConfig = field(default_factory=NTMMemoryConfig)

    @property
    def per_head(self) -> int:
        """Raw outputs one head's addressing consumes."""
        return head_param_size(self.config.width, self.config.shift_range)

    @property
    def raw_size(self) -> int:
        c = self.config
        # Read heads: addressing only; write heads: addressing, erase and add vectors.
        return c.read_heads * self.per_head + c.write_heads * (self.per_head + 2 * c.width)

    @property
    def read_size(self) -> int:
        return self.config.read_heads * self.config.width

    def init_head_bias(self, bias: Tensor) -> None:
        """Nothing to set: the NTM's heads start from PyTorch's default initialisation."""

    def init_state(
        self, batch: int, device: torch.device | str | None, dtype: torch.dtype
    ) -> NTMState:
        c = self.config
        return init_state(
            batch,
            c.rows,
            c.width,
            read_heads=c.read_heads,
            write_heads=c.write_heads,
            device=device,
            dtype=dtype,
        )

    def step(self, state: NTMState, raw: Tensor) -> tuple[Tensor, NTMState, Tensor, Tensor]:
        check_raw(self, raw)
        c, per_head, batch = self.config, self.per_head, raw.shape[0]
        n_read = c.read_heads * per_head
        read_raw = raw[:, :n_read].reshape(batch, c.read_heads, per_head)
        write_raw = raw[:, n_read:].reshape(batch, c.write_heads, per_head + 2 * c.width)
        read_params = head_params(read_raw, c.width, c.shift_range)
        write_params = head_params(write_raw[..., :per_head], c.width, c.shift_range)
        erase = torch.sigmoid(write_raw[..., per_head : per_head + c.width])
        add = torch.tanh(write_raw[..., per_head + c.width :])
        # Read the memory as it was (Mₜ₋₁), then write: the reads feed the output of this step
        # and the controller of the next.
        reads, w_read = read(state, read_params)
        state = write(state, write_params, erase, add)._replace(read_weights=w_read)
        return reads.reshape(batch, -1), state, w_read, state.write_weights


MEMORIES.register(
    MemorySpec(
        "ntm",
        NTMMemoryConfig,
        "Neural Turing Machine memory: content+location read and write heads (Graves 2014)",
        build=NTMMemory,
    )
)
