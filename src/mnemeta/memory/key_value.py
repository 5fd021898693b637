"""A plain key-value memory: explicit state, pure functions (the optax ``init``/``update`` shape).

Rows hold a key (what a query is compared with) and a value (what a read returns). Writing
appends rows; when the memory is full, the oldest rows are overwritten (a ring buffer), so a
memory of ``capacity`` rows keeps the last ``capacity`` writes. Reading is content attention
(the matching/memory-network read, Graves et al. 2014 eq. 5 with cosine similarity K)::

    w(i) = exp(β K(q, kᵢ)) / Σⱼ exp(β K(q, kⱼ))     over the written rows only
    r    = Σᵢ w(i) vᵢ

``init_state`` is the wipe: a Meta Memory Network calls it once per episode, and nothing is
ever mutated in place. Shapes: keys ``(B, capacity, Dk)``, values ``(B, capacity, Dv)``; reads
take ``(B, Q, Dk)`` queries and return ``(B, Q, Dv)`` values and ``(B, Q, capacity)`` weights
(zero on rows never written).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mnemeta.errors import ConfigError, DataError
from mnemeta.memory.addressing import cosine_similarity


class KeyValueState(NamedTuple):
    """The whole memory. ``written`` is a Python int (the number of writes so far, not capped):
    every episode of a batch writes the same number of rows, and an int keeps the valid-row
    mask static, so the functions run unchanged under ``torch.func.vmap``."""

    keys: Tensor  # (B, capacity, Dk)
    values: Tensor  # (B, capacity, Dv)
    written: int


def init_state(
    batch: int,
    capacity: int,
    key_dim: int,
    value_dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> KeyValueState:
    """An empty memory of ``capacity`` rows for each of ``batch`` episodes."""
    if capacity < 1:
        raise ConfigError(f"a key-value memory needs capacity >= 1; got {capacity}")
    return KeyValueState(
        keys=torch.zeros(batch, capacity, key_dim, device=device, dtype=dtype),
        values=torch.zeros(batch, capacity, value_dim, device=device, dtype=dtype),
        written=0,
    )


def write(state: KeyValueState, keys: Tensor, values: Tensor) -> KeyValueState:
    """Append ``n`` rows: keys ``(B, n, Dk)``, values ``(B, n, Dv)``; returns the new state.

    Rows go to slots ``written, written + 1, …`` modulo the capacity, so past the capacity the
    oldest rows are overwritten. If ``n`` exceeds the capacity only the last ``capacity`` rows
    are kept, as if written one at a time.
    """
    if keys.shape[:2] != values.shape[:2]:
        raise DataError(
            f"keys {tuple(keys.shape)} and values {tuple(values.shape)} disagree on (B, n)"
        )
    capacity = state.keys.shape[1]
    n = keys.shape[1]
    if n > capacity:  # Only the last `capacity` rows would survive a row-by-row write.
        keys, values = keys[:, n - capacity :], values[:, n - capacity :]
        return write(state._replace(written=state.written + n - capacity), keys, values)
    slots = (state.written + torch.arange(n, device=keys.device)) % capacity
    # index_copy is out of place (no mutation of the old state) and differentiable in both the
    # old memory and the new rows.
    return KeyValueState(
        keys=state.keys.index_copy(1, slots, keys.to(state.keys.dtype)),
        values=state.values.index_copy(1, slots, values.to(state.values.dtype)),
        written=state.written + n,
    )


def read(
    state: KeyValueState, query: Tensor, *, strength: Tensor | float = 1.0
) -> tuple[Tensor, Tensor]:
    """Content attention: queries ``(B, Q, Dk)`` -> values ``(B, Q, Dv)``, weights
    ``(B, Q, capacity)``.

    ``strength`` is β, a number or a tensor broadcastable to ``(B, Q)``; larger is sharper.
    The weights are non-negative, sum to one over the written rows, and are zero elsewhere.
    """
    if state.written == 0:
        raise ValueError("read from an empty key-value memory; write to it first")
    capacity = state.keys.shape[1]
    similarity = cosine_similarity(state.keys, query)  # (B, Q, capacity)
    if isinstance(strength, Tensor):
        strength = strength.unsqueeze(-1)
    logits = strength * similarity
    if state.written < capacity:
        # Unwritten rows are zeros; a zero key has cosine 0 with everything, which would still
        # draw weight, so they are masked out of the softmax.
        unwritten = torch.arange(capacity, device=query.device) >= state.written
        logits = logits.masked_fill(unwritten, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return weights @ state.values, weights
