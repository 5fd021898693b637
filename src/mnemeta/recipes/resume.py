"""Resuming a run: its own config, what may change, and where its checkpoint is.

A resumed run is the run's continuation: its config is the one its checkpoint holds (the
preset or file named at resume is only a way to find the run folder), and ``--set`` may change
only what does not change what is trained: the run's name and folder, the device, the step
budget (unless the linear schedule ends at it), the time budget, logging, evaluation and where
the data lives. Anything else is refused, naming the key. Shared by every training recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnemeta.checkpoint import checkpoint_config, load_checkpoint
from mnemeta.checks import check_values
from mnemeta.config import Config, apply_override, config_from_saved
from mnemeta.errors import CheckpointError, ConfigError
from mnemeta.recipes.clock import TrainingClock

#: Keys that may change between a run and its resumption: they do not change what is trained.
RESUMABLE_CHANGES = (
    "name",
    "device",
    "out_dir",
    "data.root",
    "data.cache_dir",
    "data.download",
    "train.steps",
    "train.max_minutes",
    "train.compile",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "eval.",
    "sequence.eval_max_length",
)


def check_resumable(saved: dict[str, Any], config: Config, path: str) -> None:
    now = _flat(config.to_dict())
    # Read back through the config loader: a key the checkpoint lacks was added to mnemeta
    # after it was written and reads as its default (at its default it cannot have changed the
    # run), and a config written by mnemeta 0.1 is translated to today's shape.
    before = _flat(config_from_saved(saved, f"checkpoint {path}").to_dict())
    changed = sorted(
        k
        for k in set(now) | set(before)
        if now.get(k) != before.get(k) and not k.startswith(RESUMABLE_CHANGES)
    )
    if changed:
        diffs = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        raise CheckpointError(
            f"checkpoint {path} was written by another config ({diffs}); resume "
            "with the same preset and --set values, or start a new run"
        )
    if config.train.lr_schedule == "linear" and now["train.steps"] != before["train.steps"]:
        # The linear schedule reaches 0 at train.steps: another budget is another schedule, and
        # the resumed rate would jump back up from where the first budget had annealed it.
        raise CheckpointError(
            f"checkpoint {path} anneals the learning rate to 0 at step {before['train.steps']} "
            f"(train.lr_schedule='linear'), so train.steps cannot change on resume (train.steps: "
            f"{before['train.steps']} -> {now['train.steps']}); resume with "
            f"train.steps={before['train.steps']}, or start a new run"
        )


def resumed_clock(
    state: dict[str, Any], config: Config, path: str, *, evaluated: bool = True
) -> TrainingClock:
    """The training clock of a resumed run, after checking that the run has budget left:
    steps below ``train.steps`` and, with ``train.max_minutes``, minutes. A run that trained
    to its end but was stopped before its final evaluation (``evaluated=False``: no
    ``result.json``) resumes with no steps left: it evaluates and writes its results."""
    start, steps = int(state["step"]), config.train.steps
    if start >= steps and not evaluated:
        return TrainingClock(0.0, float(state.get("train_seconds", 0.0)))
    if start >= steps:
        further = (
            "its linear schedule has ended: start a new run to train further"
            if config.train.lr_schedule == "linear"
            else "raise train.steps with --set to train further"
        )
        raise CheckpointError(f"{path} is already at step {start} of {steps}; {further}")
    clock = TrainingClock(config.train.max_minutes, float(state.get("train_seconds", 0.0)))
    clock.check_resumable(path)
    return clock


def find_checkpoint(resume: str, run_dir: Path | None) -> Path:
    """The checkpoint ``--resume`` names: a checkpoint file, a run folder (its
    ``checkpoint.pt``), or with no value the ``checkpoint.pt`` of ``run_dir``."""
    if resume:
        path = Path(resume).expanduser()
        return path / "checkpoint.pt" if path.is_dir() else path
    if run_dir is None:
        raise ConfigError(
            "--resume needs the run to continue: mnemeta train --resume RUN_FOLDER (or give the "
            "preset and --out of the run)"
        )
    return run_dir / "checkpoint.pt"


def resume_config(checkpoint: Path, overrides: list[str]) -> tuple[Config, int]:
    """The config of the run ``checkpoint`` belongs to, with ``overrides`` (``key=value``)
    applied where they are safe; and the step it was written at.

    Raises:
        ConfigError: an override would change what the run trains.
    """
    state = load_checkpoint(checkpoint)
    config = config_from_saved(checkpoint_config(state), f"checkpoint {checkpoint}")
    for item in overrides:
        key = item.partition("=")[0].strip()
        before = _flat(config.to_dict())
        apply_override(config, item)
        if not key.startswith(RESUMABLE_CHANGES) and _flat(config.to_dict()) != before:
            raise ConfigError(
                f"--set {key} would change what the resumed run trains (it continues with its "
                "own config); at resume only the step and time budgets (train.steps, "
                "train.max_minutes), logging, evaluation (eval.*), the device and the data "
                "location may change; start a new run to train with another value"
            )
    check_values(config)
    return config, int(state["step"])


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
