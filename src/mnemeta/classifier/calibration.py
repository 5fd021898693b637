"""The "none of these" threshold of a few-shot classifier, from its own examples only.

No example of an unknown class exists when a user adds classes, so unknowns are simulated by
leaving classes out: a stored example scored against the prototypes of the *other* classes is a
query whose class the classifier does not know (its best cosine is how well an unknown can
fit), and scored against its own class's prototype built without it (leave-one-out) it is a
known query. The threshold rejects ``recall`` of the simulated unknowns, as
:mod:`mnemeta.algorithms.open_set` does with the held-out classes of meta-training episodes.
Recomputed whenever classes are added, removed or confirmed, from at most ``sample`` examples
(evenly spread over the store), so that it costs O(sample × classes × dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.algorithms.open_set import rejection_threshold


@dataclass(frozen=True)
class Calibration:
    """A threshold and what it was measured on."""

    threshold: float
    recall: float  # the fraction of simulated unknowns rejected
    known_kept: float  # the fraction of leave-one-out known queries kept
    examples: int
    classes: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "value": self.threshold,
            "recall": self.recall,
            "known_kept": self.known_kept,
            "examples": self.examples,
            "classes": self.classes,
        }


def calibrate(
    z: Tensor,
    y: Tensor,
    sums: Tensor,
    counts: Tensor,
    *,
    recall: float = 0.9,
    sample: int = 1000,
) -> Calibration | None:
    """The threshold from unit example embeddings and the class sums they belong to.

    Args:
        z: ``(N, D)`` unit embeddings of stored examples.
        y: ``(N,)`` their class indices into ``sums``.
        sums: ``(C, D)`` per class, the sum of its unit embeddings plus its name's (if names
            count as a shot); ``counts``: ``(C,)`` how many vectors each sum holds.
        recall: the fraction of simulated unknown queries to reject.
        sample: at most this many examples are scored.

    Returns:
        None when fewer than two classes exist (nothing can stand in for an unknown).
    """
    if sums.shape[0] < 2 or z.shape[0] == 0:
        return None
    if z.shape[0] > sample:
        pick = torch.linspace(0, z.shape[0] - 1, sample).round().long()
        z, y = z[pick], y[pick]
    protos = torch.nn.functional.normalize(sums, dim=1)
    scores = z @ protos.T  # (n, C)
    rows = torch.arange(z.shape[0])
    # Leave-one-out: the own class's prototype without this example (None if it was alone).
    own_sum = sums[y] - z
    own_count = counts[y] - 1
    own = (torch.nn.functional.normalize(own_sum, dim=1) * z).sum(dim=1)
    has_own = (own_count > 0) & (own_sum.norm(dim=1) > 1e-6)
    others = scores.clone()
    others[rows, y] = -float("inf")
    unknown = others.max(dim=1).values
    threshold = rejection_threshold(unknown, recall)
    known = own[has_own]
    kept = float((known >= threshold).float().mean()) if known.numel() else float("nan")
    return Calibration(threshold, recall, kept, int(z.shape[0]), int(sums.shape[0]))


def unit(x: Tensor) -> Tensor:
    """Rows scaled to length one (cosine geometry)."""
    return torch.nn.functional.normalize(x.float(), dim=-1)
