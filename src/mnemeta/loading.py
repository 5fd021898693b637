"""``mnemeta.load``: a trained learner back from its checkpoint alone, ready for your tensors.

A checkpoint holds the run's config and the weights; from the config the registry rebuilds the
same learner (backbone, head width, hyper-parameters), and the weights go in. No data set is
read: the shape of one input and the width of the output layer are stored in the checkpoint
(inferred from the config for checkpoints of mnemeta 0.1, whose data were Omniglot or glyphs,
one channel of ``data.image_size`` pixels squared).

    >>> learner = mnemeta.load("runs/protonet_omniglot_5w1s/checkpoint.pt")
    >>> predict = learner.adapt(mnemeta.Support(x, y, n_way=5))   # x: (1, 5, 1, 28, 28)
    >>> logits = predict(queries)                                   # (1, Q, 5)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from mnemeta.checkpoint import checkpoint_config, load_checkpoint
from mnemeta.config import Config, config_from_saved
from mnemeta.errors import CheckpointError
from mnemeta.recipes.build import Learner, build_learner, learner_spec


@dataclass(frozen=True)
class LoadedLearner:
    """A rebuilt learner with what it was rebuilt from."""

    learner: Learner
    config: Config
    step: int
    input_shape: tuple[int, ...]
    outputs: int


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Learner:
    """The learner trained in the checkpoint at ``path``, in eval mode on ``device``.

    Episodic learners offer ``adapt(Support) -> predictor``; sequence models (NTM, MANN,
    LSTM) are called on ``(B, T, inputs)`` sequences. Raises :class:`CheckpointError` for a
    missing, damaged or foreign file, or weights that do not fit the config.
    """
    loaded = load_learner(path)
    return loaded.learner.to(device).eval()


def load_learner(path: str | os.PathLike[str]) -> LoadedLearner:
    """:func:`load`, keeping the config, step and shapes it was rebuilt from (on the CPU)."""
    state = load_checkpoint(path)
    config = saved_config(state, path)
    input_shape, outputs = saved_shapes(state, config)
    learner = build_learner(config, input_shape, outputs, classes=int(state.get("classes", 0)))
    try:
        learner.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).splitlines()[0][:160]
        raise CheckpointError(
            f"the weights in {path} do not fit the model its config describes "
            f"({first}); the file was changed or written by another version"
        ) from None
    return LoadedLearner(learner, config, int(state["step"]), input_shape, outputs)


def saved_config(state: dict[str, Any], path: str | os.PathLike[str]) -> Config:
    try:
        return config_from_saved(checkpoint_config(state), f"checkpoint {path}")
    except (KeyError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} holds no readable config ({e}); it was not written "
            "by `mnemeta train`"
        ) from None


def saved_shapes(state: dict[str, Any], config: Config) -> tuple[tuple[int, ...], int]:
    """(the shape of one input, the output width) the learner was built for."""
    if "input_shape" in state:
        return tuple(int(n) for n in state["input_shape"]), int(state["outputs"])
    # mnemeta 0.1 did not store them; its data sets were all one-channel images or sequences.
    side = config.data.image_size
    if learner_spec(config).recipe == "sequence":
        sc = config.sequence
        if config.data.dataset == "copy":
            return (sc.bits + 1,), sc.bits
        return (side * side + sc.classes,), sc.classes
    return (1, side, side), config.train.ways
