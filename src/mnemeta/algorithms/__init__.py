"""Meta-learners. Each satisfies :class:`mnemeta.algorithms.protocol.MetaLearner` and declares
itself (name, config, builder) in :data:`mnemeta.registry.LEARNERS` when its module is imported;
importing this package imports them all."""

from mnemeta.algorithms.baseline_pp import BaselinePP
from mnemeta.algorithms.maml import MAML, Classifier, MAMLConfig
from mnemeta.algorithms.maml_rl import MAMLRL
from mnemeta.algorithms.mann import MemoryAugmentedNetwork
from mnemeta.algorithms.matching import MatchingNet
from mnemeta.algorithms.meta_memory import MetaMemoryNet
from mnemeta.algorithms.protocol import MetaLearner, Predictor, accuracy
from mnemeta.algorithms.protonet import ProtoNet, prototypes, squared_euclidean
from mnemeta.algorithms.reptile import Reptile
from mnemeta.algorithms.rl2 import RL2
from mnemeta.algorithms.support_finetune import SupportFinetune
from mnemeta.algorithms.task_embedding import support_embedding, task_embedding
from mnemeta.algorithms.task_memory_adapt import MemoryAugmentedAdaptation

__all__ = [
    "MAML",
    "MAMLRL",
    "RL2",
    "BaselinePP",
    "Classifier",
    "MAMLConfig",
    "MatchingNet",
    "MemoryAugmentedAdaptation",
    "MemoryAugmentedNetwork",
    "MetaLearner",
    "MetaMemoryNet",
    "Predictor",
    "ProtoNet",
    "Reptile",
    "SupportFinetune",
    "accuracy",
    "prototypes",
    "squared_euclidean",
    "support_embedding",
    "task_embedding",
]
