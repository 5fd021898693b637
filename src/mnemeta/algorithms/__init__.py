"""Meta-learners. Each satisfies :class:`mnemeta.algorithms.protocol.MetaLearner`."""

from mnemeta.algorithms.matching import MatchingNet
from mnemeta.algorithms.protocol import MetaLearner, Predictor, accuracy
from mnemeta.algorithms.protonet import ProtoNet, prototypes, squared_euclidean

__all__ = [
    "MatchingNet",
    "MetaLearner",
    "Predictor",
    "ProtoNet",
    "accuracy",
    "prototypes",
    "squared_euclidean",
]
