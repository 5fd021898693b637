"""What every benchmark records beside its figures: the command, the machine, the date."""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()}"
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.readlines()
        for line in lines:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def header() -> dict[str, str]:
    return {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


class MemoEncoder:
    """A classifier encoder whose embedding of each item is computed once (by ``compute``, the
    real encoder's ``encode`` unless given), with the real encoder's identity: a benchmark
    that builds many stores from the same items encodes them once."""

    def __init__(self, real: Any, compute: Callable[[list[str]], Tensor] | None = None) -> None:
        self.real = real
        self.modality, self.dim = real.modality, real.dim
        self._compute = compute or real.encode
        self.table: dict[str, Tensor] = {}

    def identity(self) -> dict[str, Any]:
        return dict(self.real.identity())

    def spec(self) -> str:
        return str(self.real.spec())

    def encode(self, items: Sequence[Any], *, progress: bool = False) -> Tensor:
        todo = sorted({str(i) for i in items} - self.table.keys())
        if todo:
            self.table.update(zip(todo, self._compute(todo), strict=True))
        if not items:
            return torch.zeros(0, self.dim)
        return torch.stack([self.table[str(i)] for i in items])
