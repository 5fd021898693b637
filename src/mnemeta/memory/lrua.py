"""Least-recently-used access (LRUA), the MANN's memory (Santoro et al. 2016, §3.1).

A pure content-based memory that writes either to the rows it just read (to update what it
knows about a class) or to the least-used rows (to store something new), chosen by a learned
sigmoid gate. Explicit state, pure functions; :func:`init_state` is the wipe between episodes.

One step (:func:`step`), the paper's equations in the order they are applied:

1. write weights  wʷₜ = σ(α) wʳₜ₋₁ + (1 − σ(α)) wˡᵘₜ₋₁
2. the least-used row, computed from wᵘₜ₋₁, is set to zero ("prior to writing to memory")
3. write          Mₜ(i) = Mₜ₋₁(i) + Σₕ wʷₜ,ₕ(i) kₜ,ₕ
4. read weights   wʳₜ = softmax(β K(kₜ, Mₜ)) (the paper has β = 1)
5. read           rₜ = Σᵢ wʳₜ(i) Mₜ(i)
6. usage          wᵘₜ = γ wᵘₜ₋₁ + Σₕ wʳₜ,ₕ + Σₕ wʷₜ,ₕ
7. least used     wˡᵘₜ(i) = 1 if wᵘₜ(i) ≤ m(wᵘₜ, n) else 0, m(v, n) the n-th smallest entry,
                  n = the number of read heads.

As in the paper, the write key of a head is its read key, and wˡᵘ has n ones, so the write
weights of a head need not sum to one. Shapes: memory ``(B, N, W)``, per-head ``(B, H, ·)``.

:class:`LRUAMemory` is the same memory behind the :class:`~mnemeta.memory.interface.Memory`
interface (registered as ``"lrua"``): it parses a controller's raw head outputs into keys, gates
and key strengths and calls :func:`step`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from mnemeta.errors import ConfigError
from mnemeta.memory.addressing import content_weights
from mnemeta.memory.interface import check_raw
from mnemeta.memory.ntm import MEMORY_INIT, read_memory
from mnemeta.registry import MEMORIES, MemorySpec


class LRUAState(NamedTuple):
    memory: Tensor  # (B, N, W)
    usage: Tensor  # (B, N): wᵘ
    read_weights: Tensor  # (B, H, N): wʳ of the last step
    least_used: Tensor  # (B, N): wˡᵘ of the last step, n ones


def init_state(
    batch: int,
    rows: int,
    width: int,
    *,
    heads: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> LRUAState:
    """A wiped memory: no usage, no previous reads, and rows 0 … n−1 as the least used."""
    usage = torch.zeros(batch, rows, device=device, dtype=dtype)
    return LRUAState(
        memory=torch.full((batch, rows, width), MEMORY_INIT, device=device, dtype=dtype),
        usage=usage,
        read_weights=torch.zeros(batch, heads, rows, device=device, dtype=dtype),
        least_used=least_used_weights(usage, heads),
    )


def least_used_weights(usage: Tensor, n: int) -> Tensor:
    """wˡᵘ: 1 at the ``n`` smallest entries of ``usage`` ``(B, N)``, 0 elsewhere (ties: the
    lowest rows)."""
    # A stable sort breaks ties towards low row numbers, so a fresh memory fills in order.
    index = usage.argsort(dim=-1, stable=True)[:, :n]
    return torch.zeros_like(usage).scatter_(-1, index, 1.0)


def write_weights(state: LRUAState, gate_logit: Tensor) -> Tensor:
    """Step 1: σ(α) wʳₜ₋₁ + (1 − σ(α)) wˡᵘₜ₋₁ for each head; ``gate_logit`` α is ``(B, H)``."""
    g = torch.sigmoid(gate_logit).unsqueeze(-1)
    return g * state.read_weights + (1 - g) * state.least_used.unsqueeze(1)


def write(state: LRUAState, keys: Tensor, gate_logit: Tensor) -> tuple[LRUAState, Tensor]:
    """Steps 1-3: zero the least-used row, write each head's key with its write weights.

    Returns the state with the new memory (usage and weights not yet updated: :func:`read`
    finishes the step) and the write weights ``(B, H, N)``."""
    weights = write_weights(state, gate_logit)
    least = F.one_hot(state.usage.argmin(dim=-1), state.usage.shape[-1]).to(state.memory.dtype)
    memory = state.memory * (1 - least).unsqueeze(-1) + weights.transpose(1, 2) @ keys
    return state._replace(memory=memory), weights


def read(state: LRUAState, keys: Tensor, strength: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """Steps 4-5: content read of each head's key: ``(B, H, W)`` read vectors and ``(B, H, N)``
    weights."""
    weights = content_weights(state.memory, keys, strength)
    return read_memory(state.memory, weights), weights


def update_usage(
    state: LRUAState, read_weights: Tensor, write_weights: Tensor, decay: float
) -> LRUAState:
    """Steps 6-7: decay the usage, add this step's reads and writes, recompute wˡᵘ."""
    usage = decay * state.usage + read_weights.sum(dim=1) + write_weights.sum(dim=1)
    n = read_weights.shape[1]
    return state._replace(
        usage=usage,
        read_weights=read_weights,
        least_used=least_used_weights(usage.detach(), n),
    )


def step(
    state: LRUAState,
    keys: Tensor,
    gate_logit: Tensor,
    *,
    decay: float = 0.95,
    strength: Tensor | float = 1.0,
) -> tuple[Tensor, LRUAState, Tensor, Tensor]:
    """One LRUA step (1-7 above) for ``H`` heads with ``keys`` ``(B, H, W)`` and gate logits α
    ``(B, H)``. Returns ``(read vectors (B, H, W), new state, read weights, write weights)``."""
    state, w_write = write(state, keys, gate_logit)
    values, w_read = read(state, keys, strength)
    return values, update_usage(state, w_read, w_write, decay), w_read, w_write


@dataclass(frozen=True)
class LRUAConfig:
    """The LRUA memory's keys (the defaults are Santoro et al.'s Omniglot MANN)."""

    rows: int = 128  # N
    width: int = 40  # W
    read_heads: int = 4  # H; each head reads with its key and writes that key back
    usage_decay: float = 0.95  # γ
    # Learn a key strength β per head (the NTM's content addressing). False is the paper's
    # equation, β = 1, whose softmax over 128 cosines in [-1, 1] can never focus on one row.
    key_strength: bool = True
    initial_strength: float = 10.0  # β at initialisation (softplus(0) = 0.69 trains slowly)

    def __post_init__(self) -> None:
        for name in ("rows", "width", "read_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"LRUA memory: {name} must be at least 1, got {getattr(self, name)}"
                )
        if self.read_heads > self.rows:
            raise ConfigError(
                f"LRUA memory: read_heads={self.read_heads} needs as many least-used rows, but "
                f"rows={self.rows}; use fewer heads or more rows"
            )
        if not 0.0 <= self.usage_decay <= 1.0:
            raise ConfigError(f"LRUA memory: usage_decay must be in [0, 1], got {self.usage_decay}")
        if self.key_strength and not self.initial_strength > 0:
            raise ConfigError(
                "LRUA memory: initial_strength is a softplus output and must be > 0, got "
                f"{self.initial_strength}"
            )


@dataclass(frozen=True)
class LRUAMemory:
    """Santoro et al.'s LRUA memory behind the Memory interface.

    The raw outputs of one step are, per head, the key (tanh), the write gate's logit α and,
    with ``key_strength``, the key strength β (softplus).
    """

    config: LRUAConfig = field(default_factory=LRUAConfig)

    @property
    def per_head(self) -> int:
        """Raw outputs per head: the key, the write gate α, and (optionally) the key strength β."""
        return self.config.width + 1 + int(self.config.key_strength)

    @property
    def raw_size(self) -> int:
        return self.config.read_heads * self.per_head

    @property
    def read_size(self) -> int:
        return self.config.read_heads * self.config.width

    def init_head_bias(self, bias: Tensor) -> None:
        """Start β near ``initial_strength``: the bias of each head's β output is set to the
        softplus inverse, s + log(1 − e⁻ˢ)."""
        c = self.config
        if c.key_strength:
            # Not softplus(0) = 0.69: with β < 1 the reads are a near-uniform average of 128
            # rows, so their gradient is weak and training sits on the chance plateau far
            # longer (seen in our runs).
            per_head = bias.view(c.read_heads, self.per_head)
            per_head[:, c.width + 1] = c.initial_strength + math.log(
                -math.expm1(-c.initial_strength)
            )

    def init_state(
        self, batch: int, device: torch.device | str | None, dtype: torch.dtype
    ) -> LRUAState:
        c = self.config
        return init_state(batch, c.rows, c.width, heads=c.read_heads, device=device, dtype=dtype)

    def step(self, state: LRUAState, raw: Tensor) -> tuple[Tensor, LRUAState, Tensor, Tensor]:
        check_raw(self, raw)
        c, batch = self.config, raw.shape[0]
        raw = raw.reshape(batch, c.read_heads, self.per_head)
        keys = torch.tanh(raw[..., : c.width])
        gate = raw[..., c.width]
        strength: Tensor | float = 1.0
        if c.key_strength:
            strength = F.softplus(raw[..., c.width + 1])
        # The module's pure step (1-7 above); this method only parses the raw outputs.
        reads, state, w_read, w_write = step(
            state, keys, gate, decay=c.usage_decay, strength=strength
        )
        return reads.reshape(batch, -1), state, w_read, w_write


MEMORIES.register(
    MemorySpec(
        "lrua",
        LRUAConfig,
        "least-recently-used access: content reads, writes to the last-read or least-used rows "
        "(Santoro et al. 2016)",
        build=LRUAMemory,
    )
)
