"""Ctrl-C and ``kill`` during training: finish the step, checkpoint, exit with the way back.

Shared by the training recipes. While a :class:`StopRequests` is active, the first SIGINT
(Ctrl-C) or SIGTERM (``kill``, a scheduler's preemption) only sets a flag: the loop finishes
the step it is in, writes a checkpoint (model, optimiser, schedule, sampler and RNG state,
the clock: everything ``--resume`` needs to continue with the same losses) and raises
:class:`TrainingInterrupted`, which the CLI prints as one line with the exact resume command
and exits non-zero (130 for SIGINT, 143 for SIGTERM, the shell's convention). A second signal
aborts at once with :class:`KeyboardInterrupt`: checkpoints are written atomically, so the
previous one stays intact.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from mnemeta.errors import TrainingInterrupted

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """Turn the first SIGINT/SIGTERM into a request to stop (:attr:`signal` is set), the second
    into an immediate :class:`KeyboardInterrupt`. A no-op outside the main thread, where Python
    cannot install signal handlers."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
            "(interrupt again to abort at once, keeping the last checkpoint)",
            file=sys.stderr,
            flush=True,
        )

    def interrupted(self, step: int, steps: int, run_dir: Path) -> TrainingInterrupted:
        """The error to raise once the checkpoint of ``step`` is written."""
        assert self.signal is not None
        name = signal.Signals(self.signal).name
        return TrainingInterrupted(
            f"{name}: stopped after step {step} of {steps}; checkpoint written to "
            f"{run_dir / 'checkpoint.pt'}; continue with: {resume_command(run_dir)}",
            exit_code=128 + self.signal,
        )


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` (its checkpoint holds its config)."""
    return f"mnemeta train --resume {shlex.quote(str(run_dir))}"
