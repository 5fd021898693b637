"""Differentiable memories with explicit state: addressing, the NTM, LRUA, key-value."""

from mnemeta.memory import addressing, key_value, lrua, ntm
from mnemeta.memory.addressing import HeadParams, address, content_weights

__all__ = ["HeadParams", "address", "addressing", "content_weights", "key_value", "lrua", "ntm"]
