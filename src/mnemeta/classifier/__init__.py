"""A few-shot classifier that remembers: classes from a few examples, kept in a task memory.

    from mnemeta import FewShotClassifier
    clf = FewShotClassifier.create("intents")          # or FewShotClassifier.open("intents")
    clf.add(["i lost my card"], ["lost_card"])
    clf.predict(["my card is gone"])                    # [Prediction(label, score, top)]

From the shell: ``mnemeta classes create|add|list|remove|rename|export|confirm`` and
``mnemeta classify``.
"""

from mnemeta.classifier.classifier import ClassSummary, FewShotClassifier, Prediction
from mnemeta.classifier.encoders import CheckpointEncoder, Encoder, TextEncoder, open_encoder

__all__ = [
    "CheckpointEncoder",
    "ClassSummary",
    "Encoder",
    "FewShotClassifier",
    "Prediction",
    "TextEncoder",
    "open_encoder",
]
