"""What every benchmark records beside its figures: the command, the machine, the date."""

from __future__ import annotations

import datetime
import platform
import sys

import torch


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
