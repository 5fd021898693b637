"""``train.max_minutes``: a training-time budget that survives ``--resume``.

Shared by the training recipes. The clock counts the seconds of the training loops of every
part of a run (a checkpoint stores them), so "15 minutes of training" means the same thing for
a run made in one go and for one continued over several sessions.
"""

from __future__ import annotations

import sys
import time

import torch
from tqdm import tqdm

from mnemeta.errors import CheckpointError


class TrainingClock:
    """Seconds of training so far, against a budget of ``max_minutes`` (0: no budget)."""

    def __init__(self, max_minutes: float, trained_before: float = 0.0) -> None:
        # max_minutes >= 0 is train.max_minutes's declared rule, checked with the config.
        self.max_minutes, self.trained_before = max_minutes, trained_before
        self._start = time.perf_counter()

    def start(self) -> None:
        """Start counting (at the top of the training loop: building is not training)."""
        self._start = time.perf_counter()

    def this_run(self) -> float:
        """Training seconds of this run alone."""
        return time.perf_counter() - self._start

    def seconds(self) -> float:
        """Training seconds of this run and of the runs it resumes."""
        return self.trained_before + self.this_run()

    def finish(self, device: torch.device) -> float:
        """This run's training seconds, once the GPU (if any) has done the queued work."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return self.this_run()

    def out_of_time(self) -> bool:
        # On a GPU the host runs ahead by at most its launch queue; the recipes' logging syncs
        # every log_every steps, so the overshoot stays under one log period.
        return bool(self.max_minutes) and self.seconds() >= 60 * self.max_minutes

    def check_resumable(self, path: str) -> None:
        """Refuse to resume a run that has spent its budget (it would stop after one step)."""
        if self.max_minutes and self.trained_before >= 60 * self.max_minutes:
            raise CheckpointError(
                f"{path} has already trained {self.trained_before / 60:.1f} min, the run's "
                f"train.max_minutes={self.max_minutes:g}; raise it with --set to train further"
            )

    def announce_stop(self, step: int, steps: int) -> None:
        tqdm.write(
            f"train.max_minutes={self.max_minutes:g} reached after step {step} of {steps}; "
            "evaluating",
            file=sys.stdout,
        )
