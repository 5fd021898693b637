"""Checkpoints: tensors and plain values only, written atomically, read without unpickling code.

A checkpoint is a ``torch.save`` of a dict holding only tensors, numbers, strings, lists and
dicts, and is read back with ``torch.load(weights_only=True)``, which refuses anything else:
opening a checkpoint from an untrusted source cannot run code. It is written by
:func:`mnemeta.io.atomic_write_bytes`: to a temporary file in the same folder, flushed to disk,
and renamed over the target, so a crash leaves the old checkpoint or the new one, never half of
one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mnemeta.errors import CheckpointError
from mnemeta.io import atomic_write_bytes

FORMAT = "mnemeta-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain values) atomically, tagged with format and version."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, onto the CPU.

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or foreign file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {p} does not exist; pass the path of a checkpoint.pt "
            "written by `mnemeta train`"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        if "Weights only load failed" in str(e) and "Unsupported" in str(e):
            raise CheckpointError(
                f"{p} holds Python objects besides tensors and plain values; mnemeta refuses to "
                "load it because unpickling it could run code. Use a checkpoint from "
                "`mnemeta train`"
            ) from None
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {p} is truncated or corrupt ({reason}); use an intact checkpoint or "
            "train again"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is not a mnemeta checkpoint; pass a checkpoint.pt written by `mnemeta train`"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {p} has format version {state.get('version')}, this "
            f"mnemeta reads version {VERSION}; use the mnemeta that wrote it"
        )
    return state


def checkpoint_config(state: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(state["config"])
    assert isinstance(config, dict)
    return config
