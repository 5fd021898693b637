"""Whether a checkpoint may be resumed under a config: only keys that do not change what is
trained may differ (the run's name and folder, the device, the step budget, logging, evaluation).
Shared by every training recipe."""

from __future__ import annotations

from typing import Any

from mnemeta.config import Config
from mnemeta.errors import MnemetaError

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
    # A key the checkpoint lacks was added to mnemeta after it was written; at its default it
    # cannot have changed the run, so it reads as the default.
    before = {**_flat(Config().to_dict()), **_flat(saved)}
    changed = sorted(
        k
        for k in set(now) | set(before)
        if now.get(k) != before.get(k) and not k.startswith(RESUMABLE_CHANGES)
    )
    if changed:
        diffs = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        raise MnemetaError(
            f"checkpoint {path} was written by another config ({diffs}); resume "
            "with the same preset and --set values, or start a new run"
        )


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
