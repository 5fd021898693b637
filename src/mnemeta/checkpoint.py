"""Checkpoints: tensors and plain values only, written atomically, read without unpickling code.

A checkpoint is a ``torch.save`` of a dict holding only tensors, numbers, strings, lists and
dicts, and is read back with ``torch.load(weights_only=True)``, which refuses anything else:
opening a checkpoint from an untrusted source cannot run code. It is written by
:func:`mnemeta.io.atomic_write_bytes`: to a temporary file in the same folder, flushed to disk,
and renamed over the target, so a crash leaves the old checkpoint or the new one, never half of
one.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mnemeta.errors import CheckpointError
from mnemeta.io import atomic_write_bytes

FORMAT = "mnemeta-checkpoint"
VERSION = 1


#: Free space kept beyond a checkpoint's own size: the filesystem's metadata, the other files a
#: run writes beside it (metrics, plots), and other writers on the same disk.
SPARE_BYTES = 16 * 2**20


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain values) atomically, tagged with format and version.

    The checkpoint is serialised in memory first, so its size is known before the disk is
    touched: a disk without room for it (plus :data:`SPARE_BYTES`) is refused before writing,
    and a write that fails anyway (the disk filled meanwhile, a quota, an I/O error) is one
    :class:`CheckpointError` that names the OS's reason ("No space left on device"). Either
    way the previous checkpoint is left intact. (Serialising straight into the file would turn
    a full disk into torch's ``RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos``.)
    """
    target = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    try:
        free = shutil.disk_usage(target.parent if target.parent.exists() else Path.cwd()).free
    except OSError:
        free = None  # unknown: let the write itself tell
    if free is not None and free < len(data) + SPARE_BYTES:
        raise CheckpointError(
            f"disk full: the checkpoint {target} needs {_mb(len(data) + SPARE_BYTES)} and "
            f"{target.parent} has {_mb(free)} free; free some space or train into another --out "
            "(the previous checkpoint is intact)"
        )
    try:
        atomic_write_bytes(target, bytes(data))
    except OSError as e:
        reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointError(
            f"could not write the checkpoint {target}: {reason}; free some space or train into "
            "another --out (the previous checkpoint is intact)"
        ) from None


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def load_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, onto the CPU; with ``mmap`` the
    tensors are mapped from the file, not read, for a look at its config alone.

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or foreign file.
    """
    p = checkpoint_file(path)
    kind = _file_kind(p)
    if kind != "zip":
        what = "is empty" if kind == "empty" else "is not a PyTorch file (not a zip archive)"
        raise CheckpointError(
            f"{p} {what}, so not a mnemeta checkpoint; pass a checkpoint.pt written by "
            "`mnemeta train`"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for truncated or foreign files
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{p} holds Python objects besides tensors and plain values; mnemeta refuses to "
                "load it because unpickling it could run code; use a checkpoint written by "
                "`mnemeta train`"
            ) from None
        raise CheckpointError(
            f"checkpoint {p} is truncated or corrupt ({_first_sentence(e)}); use an intact "
            "checkpoint or train again"
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


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file ``path`` names: the file itself, or a run folder's checkpoint.pt.

    Raises:
        CheckpointError: neither exists.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "checkpoint.pt").is_file():
            return p / "checkpoint.pt"
        raise CheckpointError(
            f"{p} is a folder with no checkpoint.pt; pass a run folder of `mnemeta train` (or "
            "its checkpoint.pt)"
        )
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {p} does not exist; pass a checkpoint.pt written by `mnemeta train`, "
            "or the run folder that holds it"
        )
    return p


def _file_kind(p: Path) -> str:
    """ "zip" for what ``torch.save`` writes (a zip archive), "empty", or "other"."""
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"checkpoint {p} cannot be read ({e.strerror or e})") from None
    return "zip" if head == b"PK\x03\x04" else "empty" if not head else "other"


def _first_sentence(e: BaseException) -> str:
    """The first sentence of an exception's message, whole (never cut mid-word)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= 200 else sentence[:200].rsplit(" ", 1)[0] + " …"


def checkpoint_config(state: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(state["config"])
    assert isinstance(config, dict)
    return config
