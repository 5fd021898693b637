"""Meta-learners. Each satisfies :class:`mnemeta.algorithms.protocol.MetaLearner`."""

from mnemeta.algorithms.matching import MatchingNet
from mnemeta.algorithms.meta_memory import MetaMemoryNet
from mnemeta.algorithms.protocol import MetaLearner, Predictor, accuracy
from mnemeta.algorithms.protonet import ProtoNet, prototypes, squared_euclidean
from mnemeta.algorithms.task_embedding import support_embedding, task_embedding
from mnemeta.algorithms.task_memory_adapt import MemoryAugmentedAdaptation

__all__ = [
    "MatchingNet",
    "MemoryAugmentedAdaptation",
    "MetaLearner",
    "MetaMemoryNet",
    "Predictor",
    "ProtoNet",
    "accuracy",
    "prototypes",
    "squared_euclidean",
    "support_embedding",
    "task_embedding",
]
