"""The Neural Turing Machine's memory (Graves et al. 2014, §3): explicit state, pure functions.

``init_state`` makes a fresh memory for a batch of sequences (calling it again *is* the wipe),
``read`` and ``write`` take a state and the heads' parameters and return new values; nothing is
mutated. Any number of read and write heads, all addressed in one batched call.

Shapes: memory ``(B, N, W)``; read weights ``(B, R, N)``; write weights ``(B, Hw, N)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mnemeta.memory.addressing import HeadParams, address

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
