"""Where training metrics go: JSONL and CSV files always, TensorBoard when it is installed."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mnemeta.config import Config

#: Logged points a run gets when ``train.log_every`` is left to choose (none).
POINTS_PER_RUN = 100


def log_period(config: Config) -> int:
    """``train.log_every``, or when it is None, a period that gives every run about
    :data:`POINTS_PER_RUN` logged points (a 300-step run is logged every 3 steps, a
    30,000-step one every 300): enough for a curve, few enough for a terminal."""
    every = config.train.log_every
    return every if every is not None else max(1, config.train.steps // POINTS_PER_RUN)


class MetricsLog:
    """Append rows ``{step, ...}`` to ``metrics.jsonl`` and ``metrics.csv`` in ``run_dir``.

    On resume, rows after ``resume_step`` (written by the interrupted run after its last
    checkpoint) are dropped first, so the files read as one uninterrupted run.

    ``write=False`` (ranks other than 0 under torchrun) keeps the rows in memory and touches no
    file: rank 0 owns the run's files.
    """

    def __init__(
        self, run_dir: Path, *, resume_step: int | None = None, write: bool = True
    ) -> None:
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.write = write
        self.tensorboard: Any = None
        if not write:
            self.rows: list[dict[str, Any]] = []
            return
        rows = []
        if resume_step is not None and self.jsonl.exists():
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line]
            rows = [r for r in rows if r["step"] <= resume_step]
        self.rows = rows
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self._rewrite_csv()
        self.tensorboard = _tensorboard_writer(run_dir)

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.write:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._rewrite_csv()  # columns may grow (eval rows); small files, so rewrite whole
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _rewrite_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with self.csv.open("w", newline="") as f:
            # "\n", not the csv module's default "\r\n": the file reads as the text file it is.
            writer = csv.DictWriter(f, fieldnames=columns or ["step"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)


def _tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
