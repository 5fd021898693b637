"""Open set: say "none of these" when a query fits no class, with a threshold calibrated on
meta-training classes only.

A query's score is its best cosine to a class prototype. Known-class queries should score high,
queries of other classes low; the threshold that rejects a chosen fraction (``recall``, 90% by
default) of *unknown* queries is taken from episodes of the training classes, where the unknowns
are queries of training classes left out of the episode. No out-of-scope example and no test
class is seen while calibrating. Scoring on CLINC150's out-of-scope test queries then reports
AUROC (threshold-free) and the in-scope accuracy at the calibrated threshold, as Larson et al.
(2019) and later papers report in-scope accuracy at a fixed out-of-scope recall.
"""

from __future__ import annotations

import torch
from torch import Tensor


def auroc(known: Tensor, unknown: Tensor) -> float:
    """Area under the ROC curve of ``known`` (positives) against ``unknown`` scores: the
    probability that a random known query scores above a random unknown one (ties count half),
    computed from ranks (Mann-Whitney U)."""
    scores = torch.cat([known, unknown]).double()
    order = scores.argsort()
    # 1-based ranks in sorted order, tied scores sharing the mean of their ranks.
    _, inverse, counts = torch.unique_consecutive(
        scores[order], return_inverse=True, return_counts=True
    )
    mean_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = mean_rank[inverse]
    n_known, n_unknown = known.numel(), unknown.numel()
    u = ranks[:n_known].sum() - n_known * (n_known + 1) / 2
    return float(u / (n_known * n_unknown))


def rejection_threshold(unknown: Tensor, recall: float = 0.9) -> float:
    """The score below which ``recall`` of the ``unknown`` scores fall: rejecting scores below it
    rejects that fraction of unknown queries."""
    return float(torch.quantile(unknown.double(), recall))


def accuracy_with_rejection(
    scores: Tensor, predicted: Tensor, labels: Tensor, threshold: float
) -> float:
    """In-scope accuracy when queries scoring below ``threshold`` are rejected: a rejected
    in-scope query counts as wrong. Percent."""
    correct = (predicted == labels) & (scores >= threshold)
    return 100.0 * float(correct.float().mean())
