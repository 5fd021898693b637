"""The interface of a differentiable memory that a controller drives one step at a time.

A memory-augmented network (:class:`mnemeta.algorithms.mann.MemoryAugmentedNetwork`) is a
controller, a linear layer of ``raw_size`` head outputs, and one memory object that turns those
raw outputs into reads and writes. The memory object holds no parameters and no tensors: its
state is explicit (optax's ``init``/``update`` pattern), so wiping the memory between episodes
is a call to :meth:`Memory.init_state`, and the network owns every learned weight (the head
layer included, so its parameters keep one name and one creation order whatever the memory).

Each memory registers itself in :data:`mnemeta.registry.MEMORIES` in its own module, with the
dataclass of its keys and ``build(config) -> Memory``: ``"ntm"`` (memory/ntm.py), ``"lrua"``
(memory/lrua.py) and ``"none"`` (memory/no_memory.py, the LSTM baseline).
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor

S = TypeVar("S")


@runtime_checkable
class Memory(Protocol[S]):
    """A differentiable memory with explicit state ``S`` (a NamedTuple of ``(B, …)`` tensors).

    A state must be a NamedTuple of tensors whose first dimension is the batch, so that a loop
    can detach, move or save it field by field and rebuild it with ``type(state)(*tensors)``
    (the no-wipe variant carries it across episodes that way).
    """

    @property
    def raw_size(self) -> int:
        """How many controller outputs the heads read per step: ``step``'s ``raw`` is
        ``(B, raw_size)``."""
        ...

    @property
    def read_size(self) -> int:
        """The width of the read vector ``step`` returns, ``(B, read_size)``, which the network
        feeds back to the controller and to its output layer."""
        ...

    def init_head_bias(self, bias: Tensor) -> None:
        """Set the initial bias ``(raw_size,)`` of the head layer in place, where the memory
        wants something other than PyTorch's default; called once under ``torch.no_grad``."""
        ...

    def init_state(self, batch: int, device: torch.device | str | None, dtype: torch.dtype) -> S:
        """A wiped memory for ``batch`` sequences."""
        ...

    def step(self, state: S, raw: Tensor) -> tuple[Tensor, S, Tensor, Tensor]:
        """Parse the heads' raw outputs ``(B, raw_size)`` and read and write the memory.

        Returns ``(reads (B, read_size), new state, read weights (B, Hr, N), write weights
        (B, Hw, N))``; the weights are for plots and traces."""
        ...


def check_raw(memory: Memory[S], raw: Tensor) -> None:
    """Refuse head outputs of the wrong width before they are reshaped into something else.

    A wrong width is a bug in the calling code (a head layer not sized from ``raw_size``), so
    this raises a plain ``ValueError`` that keeps its traceback, not a ``MnemetaError``."""
    if raw.dim() != 2 or raw.shape[-1] != memory.raw_size:
        raise ValueError(
            f"{type(memory).__name__}.step takes raw head outputs of shape (batch, raw_size="
            f"{memory.raw_size}), got {tuple(raw.shape)}; size the controller's head layer "
            "as nn.Linear(controller, memory.raw_size)"
        )
