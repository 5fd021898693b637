"""mnemeta: memory-based meta-learning for PyTorch.

The flat names are the everyday ones: the learners, the backbones, the episode types, the
sampler and data loaders, and :func:`load`, which rebuilds a trained learner from its checkpoint
alone. The persistent task memory stays in :mod:`mnemeta.store` (``from mnemeta.store import
TaskMemory``) so that ``import mnemeta`` does not load FAISS; ``mnemeta.FewShotClassifier``
(:mod:`mnemeta.classifier`, built on it) is imported on first use for the same reason.
"""

from typing import Any

from mnemeta.algorithms import (
    MAML,
    Classifier,
    MatchingNet,
    MemoryAugmentedAdaptation,
    MemoryAugmentedNetwork,
    MetaLearner,
    MetaMemoryNet,
    ProtoNet,
    Reptile,
)
from mnemeta.data.classes import ClassImages
from mnemeta.data.glyphs import glyph_splits, make_glyphs
from mnemeta.data.omniglot import load_omniglot
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.data.sinusoid import SinusoidTasks
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.errors import CheckpointError, ConfigError, DataError, MnemetaError, StoreError
from mnemeta.loading import load
from mnemeta.nn import MLP, Conv4, ResNet12

__version__ = "0.1.0"
__all__ = [
    "MAML",
    "MLP",
    "CheckpointError",
    "ClassImages",
    "Classifier",
    "ConfigError",
    "Conv4",
    "DataError",
    "EpisodeBatch",
    "EpisodeSampler",
    "FewShotClassifier",
    "MatchingNet",
    "MemoryAugmentedAdaptation",
    "MemoryAugmentedNetwork",
    "MetaLearner",
    "MetaMemoryNet",
    "MnemetaError",
    "ProtoNet",
    "Reptile",
    "ResNet12",
    "SinusoidTasks",
    "StoreError",
    "Support",
    "__version__",
    "glyph_splits",
    "load",
    "load_omniglot",
    "make_glyphs",
]


def __getattr__(name: str) -> Any:
    # Lazily: the classifier needs the task memory, hence FAISS.
    if name == "FewShotClassifier":
        from mnemeta.classifier import FewShotClassifier

        return FewShotClassifier
    raise AttributeError(f"module 'mnemeta' has no attribute {name!r}")
