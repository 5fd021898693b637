"""Differentiable memories with explicit state: addressing, the NTM, LRUA, key-value.

Importing this package registers the memories a memory-augmented network can hold
(``mnemeta.registry.MEMORIES``: ``"ntm"``, ``"lrua"``, ``"none"``), each behind the one
interface of :mod:`mnemeta.memory.interface`.
"""

from mnemeta.memory import addressing, interface, key_value, lrua, no_memory, ntm
from mnemeta.memory.addressing import HeadParams, address, content_weights
from mnemeta.memory.interface import Memory
from mnemeta.memory.lrua import LRUAConfig, LRUAMemory
from mnemeta.memory.no_memory import NoMemory, NoMemoryConfig
from mnemeta.memory.ntm import NTMMemory, NTMMemoryConfig

__all__ = [
    "HeadParams",
    "LRUAConfig",
    "LRUAMemory",
    "Memory",
    "NTMMemory",
    "NTMMemoryConfig",
    "NoMemory",
    "NoMemoryConfig",
    "address",
    "addressing",
    "content_weights",
    "interface",
    "key_value",
    "lrua",
    "no_memory",
    "ntm",
]
