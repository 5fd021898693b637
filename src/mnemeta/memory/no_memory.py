"""No external memory: the LSTM baseline of Graves et al. (2014) and Santoro et al. (2016).

:class:`NoMemory` takes no head outputs and reads nothing, so a memory-augmented network built
with it is its controller alone, an LSTM, trained by the same loop as the models it is compared
with. Registered as ``"none"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from mnemeta.memory.interface import check_raw
from mnemeta.registry import MEMORIES, MemorySpec


class NoMemoryState(NamedTuple):
    """No memory, but a state like any other (a NamedTuple of batch-first tensors), so code
    that detaches, moves or saves a state field by field handles it too."""

    reads: Tensor  # (B, 0): what it reads
    weights: Tensor  # (B, 0, 0): the weights of zero heads over zero rows


@dataclass(frozen=True)
class NoMemoryConfig:
    """No keys: there is nothing to size."""


@dataclass(frozen=True)
class NoMemory:
    """No heads (``raw_size`` 0), an empty read vector (``read_size`` 0)."""

    config: NoMemoryConfig = field(default_factory=NoMemoryConfig)

    @property
    def raw_size(self) -> int:
        return 0

    @property
    def read_size(self) -> int:
        return 0

    def init_head_bias(self, bias: Tensor) -> None:
        """Nothing to set: there are no heads."""

    def init_state(
        self, batch: int, device: torch.device | str | None, dtype: torch.dtype
    ) -> NoMemoryState:
        # Made once per wipe, so that a step creates no tensor and links nothing into the
        # autograd graph: the LSTM baseline stays a bare LSTMCell and a linear output.
        return NoMemoryState(
            reads=torch.zeros(batch, 0, device=device, dtype=dtype),
            weights=torch.zeros(batch, 0, 0, device=device, dtype=dtype),
        )

    def step(
        self, state: NoMemoryState, raw: Tensor
    ) -> tuple[Tensor, NoMemoryState, Tensor, Tensor]:
        check_raw(self, raw)
        return state.reads, state, state.weights, state.weights


MEMORIES.register(
    MemorySpec(
        "none", NoMemoryConfig, "no external memory: the controller alone (LSTM)", build=NoMemory
    )
)
